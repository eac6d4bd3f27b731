//! The simulated EC2 control plane: the VPC model, its actions and the Query API wire format.

pub mod api;
pub mod error;
pub mod filter;
pub mod ids;
pub mod instance_types;
pub mod model;
pub mod ops;
pub mod page;
pub mod pool;
pub mod query;
pub mod render;
pub mod trunk;
pub mod xml;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod trunk_tests;

pub use error::Ec2Error;
pub use model::Vpc;
