//! (not yet written)

use crate::exception::Stop;

use super::Ctx;

/// Executes the instruction if it belongs to this family.
pub(crate) fn execute(ctx: &mut Ctx<'_>) -> Option<Result<(), Stop>> {
    let _ = ctx;
    None
}
