//! How executors run and are watched, whatever work they do: pools, the coordinator and its
//! monitor, executor health, circuit breakers, global backpressure, scaling decisions,
//! metrics, resource validation and the instance's membership of the cluster. Nothing here knows what a task is; that is
//! [`crate::pipeline`].

pub mod backpressure;
pub mod circuit_breaker;
pub mod coordinator;
pub mod health;
pub mod membership;
pub mod metrics;
pub mod monitor;
pub mod pool;
pub mod resources;
pub mod scaling;
