//! Developer and operator code that never ships in a Lambda: the local stack's setup (the table
//! from `template.yaml`, generated secrets, seeded bots) and the `ops` command.

pub mod devstack;
