//! One module per kind of thing the commands act on.

pub mod jobs;
pub mod runs;
pub mod system;
