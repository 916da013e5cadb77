//! How to reach PostgreSQL and where Floxide keeps its tables.

use std::time::Duration;

use crate::PostgresBackendError;

/// The connection and the schema of a deployment. Processes that share the schema share runs.
#[derive(Clone)]
pub struct PostgresConfig {
    pub(crate) url: String,
    pub(crate) pool_size: usize,
    pub(crate) schema: String,
    pub(crate) statement_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) retention: Duration,
    pub(crate) letter_retention: Duration,
    pub(crate) sweep_interval: Duration,
    pub(crate) tls_root: Option<Vec<u8>>,
    pub(crate) migrate: bool,
    pub(crate) step_history: bool,
    pub(crate) routine_history: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redacted(&self.url))
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retention", &self.retention)
            .field("dead_letter_retention", &self.letter_retention)
            .field("sweep_interval", &self.sweep_interval)
            .field("tls_root", &self.tls_root.is_some())
            .field("migrate", &self.migrate)
            .field("step_history", &self.step_history)
            .field("routine_step_history", &self.routine_history)
            .finish()
    }
}

impl PostgresConfig {
    /// A configuration for `url` (`postgres://user:password@host:port/database`, or the
    /// key=value form libpq takes), with a pool of 16 connections, the schema `floxide`, a
    /// statement timeout of 30 s and a connect timeout of 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            schema: "floxide".to_owned(),
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retention: Duration::from_secs(24 * 3600),
            letter_retention: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_secs(60),
            tls_root: None,
            migrate: true,
            step_history: true,
            routine_history: false,
        }
    }

    /// Whether each run's step history is recorded (on by default): every lease taken,
    /// renewed or expired, every commit applied or fenced out, every failure and release, a
    /// row of `step_events` each, written in the statement of the transition and read back by
    /// `AdminBackend::step_history` (the dashboard's timeline). Two rows per step of a linear
    /// run, measured at about 16% of the 30,000-run backlog workload's throughput; a
    /// deployment that never looks at it can turn it off (its runs then have an empty
    /// history). Processes of one deployment may differ in this setting.
    #[must_use]
    pub fn with_step_history(mut self, on: bool) -> Self {
        self.step_history = on;
        self
    }

    /// Whether a run that completes with a routine step history keeps it for the retention
    /// (off by default, as on Redis). A history is routine while every item was leased once,
    /// on its first delivery, and renewed or committed: nothing expired, was fenced out,
    /// failed or was released. Such a history tells no more than the run's node timings, and
    /// would be most of the rows a finished run leaves (two per step), so the commit that
    /// completes the run deletes it when it holds at most 1,000 events (a bigger history
    /// stays: the drop is a bounded statement).
    #[must_use]
    pub fn with_routine_step_history(mut self, keep: bool) -> Self {
        self.routine_history = keep;
        self
    }

    /// Whether connecting brings the schema to this release's version (the default), or
    /// only checks it and refuses a missing or older one
    /// ([`PostgresBackendError::SchemaNotReady`]): for tools that must not create tables,
    /// such as the `floxide` command-line tool.
    #[must_use]
    pub fn with_migration_on_connect(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// Trusts the root certificate(s) in `pem` (instead of the operating system's) to verify
    /// the server, and uses TLS. Without it, TLS is used when the URL says `sslmode=require`,
    /// verified against the operating system's roots. The server's name is checked either way.
    #[must_use]
    pub fn with_tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// How long finished runs are kept, with their items, outputs and errors (default 24 h;
    /// at least 1 s). A sweeper deletes them afterwards (see
    /// [`PostgresBackend::sweep`](crate::PostgresBackend::sweep)).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.max(Duration::from_secs(1));
        self
    }

    /// How long dead letters are kept, whether or not their run still is (default 7 days; at
    /// least 1 s).
    #[must_use]
    pub fn with_dead_letter_retention(mut self, retention: Duration) -> Self {
        self.letter_retention = retention.max(Duration::from_secs(1));
        self
    }

    /// How often each backend value sweeps what outlived its retention (default 60 s; at
    /// least 100 ms).
    #[must_use]
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// The retention of finished runs.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The retention of dead letters.
    pub fn dead_letter_retention(&self) -> Duration {
        self.letter_retention
    }

    /// The most connections this process opens (at least 1).
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// The schema holding Floxide's tables (created when missing): lowercase letters,
    /// digits and `_`, starting with a letter or `_`, at most 63 characters.
    #[must_use]
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The longest a statement may run before the server cancels it.
    #[must_use]
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long connecting may take.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Checks the settings, and parses the URL into the client's configuration.
    pub(crate) fn client_config(&self) -> Result<tokio_postgres::Config, PostgresBackendError> {
        check_schema(&self.schema)?;
        if self.pool_size == 0 {
            return Err(PostgresBackendError::InvalidConfig(
                "the pool size must be at least 1".to_owned(),
            ));
        }
        if self.statement_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(PostgresBackendError::InvalidConfig(
                "the statement and connect timeouts must be longer than zero".to_owned(),
            ));
        }
        let mut config: tokio_postgres::Config = self.url.parse().map_err(|e| {
            PostgresBackendError::InvalidUrl(format!("`{}`: {e}", redacted(&self.url)))
        })?;
        let mut options = config.get_options().unwrap_or("").to_owned();
        // Generic plans: the hot statements are prepared once per connection, and a custom
        // plan re-plans every execution at bind time (0.07–0.1 ms each for the take and the
        // commit's write, most of a lone step's server time). Statements whose filters are
        // optional are written per combination of filters instead of `$1 IS NULL OR …`.
        // A generic plan is made once, at a statement's first execution on the connection: if
        // the queue was nearly empty then, it scans whole tables and hash-joins, and keeps
        // doing so when the queue holds thousands of items. Every hot statement reaches its
        // rows by key, so sequential and bitmap scans are ruled out to pin the index plans.
        options.push_str(&format!(
            " -c statement_timeout={} -c search_path={} -c jit=off \
             -c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
             -c enable_bitmapscan=off",
            self.statement_timeout.as_millis(),
            self.schema
        ));
        config
            .options(options.trim())
            .connect_timeout(self.connect_timeout)
            .application_name("floxide");
        Ok(config)
    }
}

/// A schema name must be a plain identifier: it is written into SQL unquoted.
fn check_schema(schema: &str) -> Result<(), PostgresBackendError> {
    let mut chars = schema.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if starts_well && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(PostgresBackendError::InvalidConfig(format!(
            "schema name `{schema}`: use lowercase letters, digits and `_`, starting with a \
             letter or `_`, at most 63 characters"
        )))
    }
}

/// `url` without its password.
pub(crate) fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => match url.find("password=") {
            Some(p) => {
                let end = url[p..].find(' ').map_or(url.len(), |e| p + e);
                format!("{}password=***{}", &url[..p], &url[end..])
            }
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redacted("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redacted("host=db password=s3cret user=app"),
            "host=db password=*** user=app"
        );
        let debug = format!("{:?}", PostgresConfig::new("postgres://a:pw@h/d"));
        assert!(!debug.contains("pw@"), "{debug}");
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        for schema in ["", "Flows", "1abc", "a-b", "a;drop", &"x".repeat(64)] {
            let e = PostgresConfig::new("postgres://h/d")
                .with_schema(schema)
                .client_config()
                .unwrap_err();
            assert!(
                matches!(e, PostgresBackendError::InvalidConfig(_)),
                "{schema}: {e}"
            );
        }
        let e = PostgresConfig::new("postgres://h/d")
            .with_pool_size(0)
            .client_config()
            .unwrap_err();
        assert!(matches!(e, PostgresBackendError::InvalidConfig(_)), "{e}");
        let e = PostgresConfig::new("postgres://u:pw@h:notaport/d")
            .client_config()
            .unwrap_err();
        assert!(matches!(e, PostgresBackendError::InvalidUrl(_)), "{e}");
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn the_schema_and_timeout_go_into_the_session() {
        let config = PostgresConfig::new("postgres://h/d?options=-c%20work_mem%3D8MB")
            .with_schema("flows")
            .with_statement_timeout(Duration::from_millis(1500))
            .client_config()
            .unwrap();
        let options = config.get_options().unwrap();
        assert!(options.contains("work_mem=8MB"), "{options}");
        assert!(options.contains("statement_timeout=1500"), "{options}");
        assert!(options.contains("search_path=flows"), "{options}");
    }
}
