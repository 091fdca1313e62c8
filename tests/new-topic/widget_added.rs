//! `widget-added`: stores the widget. Exists only in scripts/check-new-topic.sh's copy of the tree.

use crate::router::{Context, Handler, HandlerError};
use crate::store::Tx;
use crate::topics::WidgetAdded;

pub struct StoreWidget;

impl Handler<WidgetAdded> for StoreWidget {
    async fn handle(&self, widget: WidgetAdded, ctx: &Context, tx: &mut Tx) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO widgets (widget_id, name, org_id) VALUES ($1, $2, $3)")
            .bind(widget.widget_id)
            .bind(widget.name.as_str())
            .bind(ctx.org_id())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
