//! The embedded-migration runner both backends use.

/// A sqlx migrator over migrations embedded with `include_str!` as `(version, description,
/// sql)`. Built by hand because sqlx's `migrate!` macro needs its proc-macro feature, which
/// this workspace leaves off to keep builds lean.
pub fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let migrations = migrations
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                description.into(),
                MigrationType::Simple,
                sql.into(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}
