//! The two databases behind the store, as one small interface: SQLite (the
//! embedded default, one file) and PostgreSQL (a server many nodes of a
//! cluster write at once). Statements are written once, with `?N`
//! placeholders, in the SQL both dialects share; values cross as [`Value`] and
//! come back as [`Row`]s, so the store's methods never name a backend.

use anyhow::{anyhow, bail, Context, Result};
use std::fmt;
use std::path::PathBuf;

/// Where a store lives.
#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// A `postgres://…` URL, else a SQLite file's path.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(PathBuf::from(s))
        }
    }

    /// What to pass on to another process (`--db`), password included.
    pub fn arg(&self) -> String {
        match self {
            Location::Sqlite(p) => p.display().to_string(),
            Location::Postgres(url) => url.clone(),
        }
    }
}

impl From<&Location> for Location {
    fn from(l: &Location) -> Location {
        l.clone()
    }
}
impl From<&std::path::Path> for Location {
    fn from(p: &std::path::Path) -> Location {
        Location::Sqlite(p.to_path_buf())
    }
}
impl From<&PathBuf> for Location {
    fn from(p: &PathBuf) -> Location {
        Location::Sqlite(p.clone())
    }
}

impl fmt::Display for Location {
    /// The path, or the URL without its password (it goes into messages and logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "{}", p.display()),
            Location::Postgres(url) => {
                let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
                match rest.split_once('@') {
                    Some((user, host)) if user.contains(':') => {
                        let user = user.split(':').next().unwrap_or_default();
                        write!(f, "{scheme}://{user}:***@{host}")
                    }
                    _ => write!(f, "{url}"),
                }
            }
        }
    }
}

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// Integers (and truth values) are stored as i64, as both databases keep them.
macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(v as i64)
            }
        }
    )*};
}
int_value!(i64, u64, usize, u32, bool);
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Real(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Value {
        Value::Blob(v.to_vec())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl<T: Clone + Into<Value>> From<&Option<T>> for Value {
    fn from(v: &Option<T>) -> Value {
        v.clone().map_or(Value::Null, Into::into)
    }
}

/// `vals![a, b, c]`: a statement's parameters.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Value::from($v)),*][..] };
}
pub(crate) use vals;

/// One row of a query's answer, read by column position.
#[derive(Debug, Clone)]
pub struct Row(Vec<Value>);

impl Row {
    fn at(&self, i: usize) -> Result<&Value> {
        self.0
            .get(i)
            .ok_or_else(|| anyhow!("the store's row has no column {i}"))
    }

    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Int(v) => Ok(Some(*v)),
            other => bail!("the store's column {i} holds {other:?}, not an integer"),
        }
    }
    pub fn i64(&self, i: usize) -> Result<i64> {
        self.opt_i64(i)?
            .ok_or_else(|| anyhow!("the store's column {i} is NULL, not an integer"))
    }
    pub fn opt_u64(&self, i: usize) -> Result<Option<u64>> {
        Ok(self.opt_i64(i)?.map(|v| v as u64))
    }
    pub fn u64(&self, i: usize) -> Result<u64> {
        Ok(self.i64(i)? as u64)
    }
    pub fn opt_bool(&self, i: usize) -> Result<Option<bool>> {
        Ok(self.opt_i64(i)?.map(|v| v != 0))
    }
    pub fn bool(&self, i: usize) -> Result<bool> {
        Ok(self.i64(i)? != 0)
    }
    pub fn opt_f64(&self, i: usize) -> Result<Option<f64>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Real(v) => Ok(Some(*v)),
            Value::Int(v) => Ok(Some(*v as f64)),
            other => bail!("the store's column {i} holds {other:?}, not a number"),
        }
    }
    pub fn f64(&self, i: usize) -> Result<f64> {
        self.opt_f64(i)?
            .ok_or_else(|| anyhow!("the store's column {i} is NULL, not a number"))
    }
    pub fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            other => bail!("the store's column {i} holds {other:?}, not text"),
        }
    }
    pub fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| anyhow!("the store's column {i} is NULL, not text"))
    }
    pub fn blob(&self, i: usize) -> Result<Vec<u8>> {
        match self.at(i)? {
            Value::Blob(b) => Ok(b.clone()),
            other => bail!("the store's column {i} holds {other:?}, not bytes"),
        }
    }
    /// A text column holding a name one of our enums parses (a status, a transport).
    pub fn parsed<T: std::str::FromStr<Err = String>>(&self, i: usize) -> Result<T> {
        self.text(i)?
            .parse()
            .map_err(|e: String| anyhow!("the store's column {i}: {e}"))
    }
}

/// Statements on a connection or inside a transaction.
pub trait Sql {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>>;
    /// Answers the number of rows changed.
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64>;
    /// Several statements without parameters (a migration).
    fn batch(&mut self, sql: &str) -> Result<()>;

    fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| anyhow!("the store answered no row to {}", first_line(sql)))
    }
}

/// A statement for an error message: on one line, its start.
fn first_line(sql: &str) -> String {
    let one: Vec<&str> = sql.split_whitespace().collect();
    let one = one.join(" ");
    match one.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &one[..i]),
        None => one,
    }
}

/// An open connection to either database.
pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// A transaction on either database; dropped without `commit`, it rolls back.
pub enum Tx<'a> {
    Sqlite(rusqlite::Transaction<'a>),
    Postgres(postgres::Transaction<'a>),
}

impl Conn {
    pub fn connect(location: &Location) -> Result<Conn> {
        match location {
            Location::Sqlite(path) => Ok(Conn::Sqlite(
                rusqlite::Connection::open(path)
                    .with_context(|| format!("opening the run store {}", path.display()))?,
            )),
            Location::Postgres(url) => {
                let client =
                    postgres::Client::connect(url, postgres::NoTls).with_context(|| {
                        format!("connecting to the run store {location} (PostgreSQL)")
                    })?;
                Ok(Conn::Postgres(Box::new(client)))
            }
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Conn::Postgres(_))
    }

    /// A transaction. `exclusive`: it holds the store's write lock from its
    /// first statement (SQLite: BEGIN IMMEDIATE; PostgreSQL: the caller locks
    /// what it reads, see [`Tx::lock_table`]).
    pub fn transaction(&mut self, exclusive: bool) -> Result<Tx<'_>> {
        Ok(match self {
            Conn::Sqlite(c) => Tx::Sqlite(if exclusive {
                rusqlite::Transaction::new_unchecked(c, rusqlite::TransactionBehavior::Immediate)?
            } else {
                c.transaction()?
            }),
            Conn::Postgres(c) => Tx::Postgres(c.transaction()?),
        })
    }
}

impl Tx<'_> {
    pub fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.commit()?,
            Tx::Postgres(t) => t.commit()?,
        }
        Ok(())
    }

    /// Takes `table`'s write lock until the transaction ends, so a row read
    /// here and the row written after it cannot interleave with another
    /// writer's (SQLite's IMMEDIATE transaction already holds the whole file).
    pub fn lock_table(&mut self, table: &str) -> Result<()> {
        if let Tx::Postgres(t) = self {
            t.batch_execute(&format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))?;
        }
        Ok(())
    }
}

impl Sql for Conn {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Conn::Sqlite(c) => sqlite_query(c, sql, params),
            Conn::Postgres(c) => pg_query(&mut **c, sql, params),
        }
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Conn::Sqlite(c) => sqlite_execute(c, sql, params),
            Conn::Postgres(c) => pg_execute(&mut **c, sql, params),
        }
    }
    fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres(c) => c.batch_execute(sql)?,
        }
        Ok(())
    }
}

impl Sql for Tx<'_> {
    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match self {
            Tx::Sqlite(t) => sqlite_query(t, sql, params),
            Tx::Postgres(t) => pg_query(t, sql, params),
        }
    }
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match self {
            Tx::Sqlite(t) => sqlite_execute(t, sql, params),
            Tx::Postgres(t) => pg_execute(t, sql, params),
        }
    }
    fn batch(&mut self, sql: &str) -> Result<()> {
        match self {
            Tx::Sqlite(t) => t.execute_batch(sql)?,
            Tx::Postgres(t) => t.batch_execute(sql)?,
        }
        Ok(())
    }
}

// SQLite.

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Null => ValueRef::Null,
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Real(v) => ValueRef::Real(*v),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

fn sqlite_query(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = c.prepare_cached(sql)?;
    let n = stmt.column_count();
    let rows = stmt
        .query_map(rusqlite::params_from_iter(params), |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => Value::Null,
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(v),
                        rusqlite::types::ValueRef::Real(v) => Value::Real(v),
                        rusqlite::types::ValueRef::Text(t) => {
                            Value::Text(String::from_utf8_lossy(t).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(b) => Value::Blob(b.to_vec()),
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()
                .map(Row)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

fn sqlite_execute(c: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<u64> {
    Ok(c.prepare_cached(sql)?
        .execute(rusqlite::params_from_iter(params))? as u64)
}

// PostgreSQL.

/// `?N` (SQLite's numbered parameter) to `$N` (PostgreSQL's). No statement of
/// the store has a `?` inside a string literal.
fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl postgres::types::ToSql for Value {
    /// A value as the column's type asks: an integer into a boolean column is
    /// `<> 0`, into a float column a float; our enums hold i64 and f64 only.
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::{IsNull, Type};
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) => match *ty {
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => v.to_string().to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Real(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
            Value::Blob(b) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

fn pg_params(params: &[Value]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn postgres::types::ToSql + Sync))
        .collect()
}

fn pg_row(r: &postgres::Row) -> Result<Row> {
    use postgres::types::Type;
    (0..r.len())
        .map(|i| {
            let ty = r.columns()[i].type_().clone();
            Ok(match ty {
                Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
                Type::INT4 => r.try_get::<_, Option<i32>>(i)?.map(|v| Value::Int(v as i64)),
                Type::INT2 => r.try_get::<_, Option<i16>>(i)?.map(|v| Value::Int(v as i64)),
                Type::BOOL => r.try_get::<_, Option<bool>>(i)?.map(|v| Value::Int(v as i64)),
                Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
                Type::FLOAT4 => r.try_get::<_, Option<f32>>(i)?.map(|v| Value::Real(v as f64)),
                Type::BYTEA => r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
                Type::NUMERIC => bail!(
                    "the store's column {} is NUMERIC, which the store never writes: cast it in the query",
                    r.columns()[i].name()
                ),
                _ => r.try_get::<_, Option<String>>(i)?.map(Value::Text),
            }
            .unwrap_or(Value::Null))
        })
        .collect::<Result<Vec<_>>>()
        .map(Row)
}

fn pg_query(c: &mut impl postgres::GenericClient, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let sql = pg_placeholders(sql);
    let rows = c
        .query(sql.as_str(), &pg_params(params))
        .with_context(|| format!("the run store (PostgreSQL): {}", first_line(&sql)))?;
    rows.iter().map(pg_row).collect()
}

fn pg_execute(c: &mut impl postgres::GenericClient, sql: &str, params: &[Value]) -> Result<u64> {
    let sql = pg_placeholders(sql);
    c.execute(sql.as_str(), &pg_params(params))
        .with_context(|| format!("the run store (PostgreSQL): {}", first_line(&sql)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_postgres_ones_and_nothing_else_changes() {
        assert_eq!(
            pg_placeholders("SELECT a FROM t WHERE (?1 IS NULL OR b = ?1) AND c = ?12"),
            "SELECT a FROM t WHERE ($1 IS NULL OR b = $1) AND c = $12"
        );
        assert_eq!(pg_placeholders("SELECT '?' || x"), "SELECT '?' || x");
    }

    #[test]
    fn a_postgres_url_is_told_from_a_path_and_its_password_is_never_printed() {
        let l = Location::parse("postgres://speedrun:s3cret@db.cluster:5432/runs");
        assert!(matches!(l, Location::Postgres(_)));
        assert_eq!(
            l.to_string(),
            "postgres://speedrun:***@db.cluster:5432/runs"
        );
        assert!(l.arg().contains("s3cret"));
        assert_eq!(
            Location::parse("postgresql://u@h/db").to_string(),
            "postgresql://u@h/db"
        );
        assert_eq!(
            Location::parse("runs/speedrun.db"),
            Location::Sqlite(PathBuf::from("runs/speedrun.db"))
        );
    }

    #[test]
    fn rows_read_back_what_sqlite_was_given() {
        let mut c = Conn::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        c.batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB)")
            .unwrap();
        let n = c
            .execute(
                "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
                vals![Some(7u64), 2.5, "x", &b"\x00\x01"[..]],
            )
            .unwrap();
        assert_eq!(n, 1);
        c.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            vals![None::<i64>, 3i64, None::<String>, &b""[..]],
        )
        .unwrap();
        let rows = c
            .query("SELECT i, r, s, b FROM t ORDER BY rowid", &[])
            .unwrap();
        assert_eq!(rows[0].u64(0).unwrap(), 7);
        assert_eq!(rows[0].f64(1).unwrap(), 2.5);
        assert_eq!(rows[0].text(2).unwrap(), "x");
        assert_eq!(rows[0].blob(3).unwrap(), vec![0, 1]);
        assert_eq!(rows[1].opt_i64(0).unwrap(), None);
        // An integer stored in a REAL column reads back as a number.
        assert_eq!(rows[1].f64(1).unwrap(), 3.0);
        assert!(rows[1].text(2).unwrap_err().to_string().contains("NULL"));
        assert!(rows[0]
            .i64(2)
            .unwrap_err()
            .to_string()
            .contains("not an integer"));
    }
}
