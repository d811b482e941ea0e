//! Stock job kinds every worker serves.

mod exec;
mod group;
mod simple;

pub use exec::Exec;
pub use simple::{Fail, Noop, Sleep};
