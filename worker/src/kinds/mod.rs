//! Stock job kinds every worker serves.

mod exec;
mod simple;

pub use exec::Exec;
pub use simple::{Fail, Noop, Sleep};
