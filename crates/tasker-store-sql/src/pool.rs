//! Connection pool statistics for backpressure and resource validation.

/// Size and use of one sqlx pool.
pub fn pool_stats<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> tasker_store::ConnectionPoolStats {
    let open = pool.size();
    // sqlx's idle counter can read transiently wrapped (a huge value) while a connection is
    // being returned; an idle count can never exceed the open connections.
    let idle = u32::try_from(pool.num_idle()).map_or(0, |idle| idle.min(open));
    tasker_store::ConnectionPoolStats {
        max_connections: pool.options().get_max_connections(),
        open,
        idle,
    }
}
