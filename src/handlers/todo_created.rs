//! `todo-created`: stores the todo. Todo ids are unique: a second, different message with an id
//! that is already taken is rejected (dead-lettered), not silently merged.

use crate::router::{Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::TodoCreated;

pub struct StoreTodo;

impl Handler<TodoCreated> for StoreTodo {
    const REASONS: &'static [&'static str] = &["todo_id_out_of_range", "todo_id_taken"];

    async fn handle(&self, todo: TodoCreated, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        let id = i32::try_from(todo.id)
            .map_err(|_| HandlerError::rejected("todo_id_out_of_range", format!("todo id {} does not fit 0..2^31", todo.id)))?;
        let inserted = sqlx::query(
            "INSERT INTO todos (id, title, description, org_id, request_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(todo.title.as_str())
        .bind(todo.description.as_str())
        .bind(ctx.org_id())
        .bind(&ctx.request_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(HandlerError::rejected("todo_id_taken", format!("a todo with id {id} already exists")));
        }
        Ok(())
    }
}
