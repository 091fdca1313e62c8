//! `todo-created`: stores the todo. Todo ids are unique: a second, different message with an id
//! that is already taken is rejected (dead-lettered), not silently merged.
//!
//! Written set-based: one `INSERT ... SELECT FROM UNNEST` per batch, whose `RETURNING` tells which
//! ids were free.

use std::collections::HashSet;

use crate::router::{BatchError, Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::TodoCreated;

pub(crate) struct StoreTodo;

fn id_taken(id: i32) -> HandlerError {
    HandlerError::rejected("todo_id_taken", format!("a todo with id {id} already exists"))
}

impl Handler<TodoCreated> for StoreTodo {
    const REASONS: &'static [&'static str] = &["todo_id_out_of_range", "todo_id_taken"];

    async fn handle(&self, todo: TodoCreated, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        self.handle_batch(vec![(todo, ctx)], tx).await.map_err(|e| e.error)
    }

    async fn handle_batch<'a>(&'a self, todos: Vec<(TodoCreated, &'a Context)>, tx: &'a mut Tx) -> Result<(), BatchError> {
        // The todos before the first id that does not fit are still written, so that the error
        // names the first todo that failed.
        let mut ids = Vec::with_capacity(todos.len());
        let mut out_of_range = None;
        for (index, (todo, _)) in todos.iter().enumerate() {
            match i32::try_from(todo.id) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    let message = format!("todo id {} does not fit 0..2^31", todo.id);
                    out_of_range = Some(BatchError::at(index, HandlerError::rejected("todo_id_out_of_range", message)));
                    break;
                }
            }
        }
        let writable = &todos[..ids.len()];
        let inserted: HashSet<i32> = sqlx::query_scalar(
            "INSERT INTO todos (id, title, description, org_id, request_id)
             SELECT * FROM UNNEST($1::int4[], $2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (id) DO NOTHING
             RETURNING id",
        )
        .bind(&ids)
        .bind(writable.iter().map(|(t, _)| t.title.as_str()).collect::<Vec<_>>())
        .bind(writable.iter().map(|(t, _)| t.description.as_str()).collect::<Vec<_>>())
        .bind(writable.iter().map(|(_, ctx)| ctx.org_id()).collect::<Vec<_>>())
        .bind(writable.iter().map(|(_, ctx)| ctx.request_id.as_str()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .collect();
        // An id not returned was taken before the batch; one seen earlier in the batch, by it.
        let mut seen = HashSet::with_capacity(ids.len());
        if let Some((index, &id)) = ids.iter().enumerate().find(|(_, id)| !seen.insert(**id) || !inserted.contains(*id)) {
            return Err(BatchError::at(index, id_taken(id)));
        }
        out_of_range.map_or(Ok(()), Err)
    }
}
