//! The series files: one SQLite file per series, their definitions cached,
//! the shared writers, idle readers kept for reuse, and the schema
//! migration a file made by an older node gets when it is opened.

use super::*;
use crate::timeseries::model::{Curve, time_zone_of};

/// Columns `chunks` gained after the first release. A file made before
/// them gets them the first time a node opens it; its old chunks hold NULL
/// there (shape unknown), so reads send their columns row by row.
pub(super) const ADDED_CHUNK_COLUMNS: [&str; 2] = ["step_ms INTEGER", "same_flags INTEGER"];

/// Idle read-only connections kept for reuse, per series and in all.
/// Opening one costs a file open, SQLite's parse of the schema and a mapping
/// of the WAL index (about half a millisecond on the benchmark machine,
/// against a few microseconds for a kept one). A reader finished when its
/// series already has this many idle, or the node this many in all, is
/// closed.
pub(super) const IDLE_READERS_PER_SERIES: usize = 4;
pub(super) const IDLE_READERS: usize = 64;

/// Idle readers by series id, and how many in all.
#[derive(Default)]
pub(super) struct IdleReaders {
    by_series: HashMap<String, Vec<Connection>>,
    pub(super) count: usize,
}

/// A read-only connection to one series file, lent by the store; it goes
/// back to the store's idle readers when dropped.
pub struct Reader<'s> {
    store: &'s SeriesFiles,
    id: &'s str,
    conn: Option<Connection>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("held until dropped")
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        // A reader left inside a transaction would pin an old snapshot; one
        // of a series removed while it read would hold a deleted file.
        if !conn.is_autocommit() || !self.store.lock_current().contains(self.id) {
            return;
        }
        let mut idle = self.store.lock_idle();
        let idle = &mut *idle;
        let kept = idle.by_series.entry(self.id.to_string()).or_default();
        if kept.len() < IDLE_READERS_PER_SERIES && idle.count < IDLE_READERS {
            kept.push(conn);
            idle.count += 1;
        }
    }
}

/// The series files of a node, with their definitions cached.
/// The files of a node's time series.
pub struct SeriesFiles {
    dir: PathBuf,
    specs: Mutex<HashMap<String, Arc<SeriesSpec>>>,
    writers: WriterPool,
    /// Series whose file this process has seen with every chunk column.
    current: Mutex<HashSet<String>>,
    idle: Mutex<IdleReaders>,
}

/// The node's time series; cheap to clone (clones share the files, specs,
/// writers and idle readers).
#[derive(Clone)]
pub struct TimeSeriesStore(Arc<SeriesFiles>);

impl TimeSeriesStore {
    pub fn new(data_dir: &Path) -> TimeSeriesStore {
        TimeSeriesStore(Arc::new(SeriesFiles::new(data_dir)))
    }
}

impl std::ops::Deref for TimeSeriesStore {
    type Target = SeriesFiles;
    fn deref(&self) -> &SeriesFiles {
        &self.0
    }
}

impl SeriesFiles {
    fn new(data_dir: &Path) -> SeriesFiles {
        SeriesFiles {
            dir: data_dir.join("timeseries"),
            specs: Mutex::new(HashMap::new()),
            writers: WriterPool::default(),
            current: Mutex::new(HashSet::new()),
            idle: Mutex::new(IdleReaders::default()),
        }
    }

    pub(super) fn lock_idle(&self) -> std::sync::MutexGuard<'_, IdleReaders> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-only connection to a series file: an idle one when there is
    /// one, else a new one (see [`IDLE_READERS`]).
    pub fn reader<'s>(&'s self, id: &'s str) -> Result<Reader<'s>> {
        let kept = {
            let mut idle = self.lock_idle();
            let conn = idle.by_series.get_mut(id).and_then(Vec::pop);
            if conn.is_some() {
                idle.count -= 1;
            }
            conn
        };
        let conn = match kept {
            Some(conn) => conn,
            None => self.open_reader(id)?,
        };
        Ok(Reader {
            store: self,
            id,
            conn: Some(conn),
        })
    }

    fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.sqlite"))
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read-write connection to a series file.
    pub fn open_writer(&self, id: &str) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        self.bring_up_to_date(id, &conn)?;
        Ok(conn)
    }

    /// Adds the chunk columns an older file lacks, once per file and process
    /// (the lock held throughout, so two first opens cannot both add them).
    fn bring_up_to_date(&self, id: &str, conn: &Connection) -> Result<()> {
        let mut current = self.lock_current();
        if current.contains(id) {
            return Ok(());
        }
        let have: HashSet<String> = conn
            .prepare("SELECT name FROM pragma_table_info('chunks')")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for column in ADDED_CHUNK_COLUMNS {
            let name = column.split(' ').next().expect("a name first");
            if !have.contains(name) {
                conn.execute_batch(&format!("ALTER TABLE chunks ADD COLUMN {column}"))?;
            }
        }
        current.insert(id.to_string());
        Ok(())
    }

    /// A connection that can only read (WAL: it never waits for writers).
    pub(super) fn open_reader(&self, id: &str) -> Result<Connection> {
        if !self.lock_current().contains(id) {
            // A read-only connection cannot add the columns reads ask for.
            self.open_writer(id)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(conn)
    }

    /// Creates the file of a new TIMESERIES resource.
    pub(super) fn create_file(&self, id: &str, spec: &SeriesSpec) -> Result<()> {
        time_zone_of(spec)?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", self.dir.display())))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(self.file(id), flags)?;
        // Large pages: a chunk spans a few pages instead of a hundred.
        conn.pragma_update(None, "page_size", 65536)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE spec (id INTEGER PRIMARY KEY CHECK (id = 1), definition TEXT NOT NULL);
             CREATE TABLE chunks (
                 start_ms INTEGER PRIMARY KEY,
                 last_ms INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 times BLOB NOT NULL,
                 flags BLOB NOT NULL,
                 vals BLOB NOT NULL,
                 step_ms INTEGER,
                 same_flags INTEGER
             );",
        )?;
        conn.execute(
            "INSERT INTO spec (id, definition) VALUES (1, ?1)",
            [spec_to_json(spec)],
        )?;
        self.lock_current().insert(id.to_string());
        self.lock_specs()
            .insert(id.to_string(), Arc::new(spec.clone()));
        Ok(())
    }

    /// Removes a deleted series' files.
    pub(super) fn remove_file(&self, id: &str) {
        self.lock_specs().remove(id);
        self.lock_current().remove(id);
        let mut idle = self.lock_idle();
        if let Some(closed) = idle.by_series.remove(id) {
            idle.count -= closed.len();
        }
        drop(idle);
        self.writers.remove(id);
        let file = self.file(id);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }

    fn lock_specs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SeriesSpec>>> {
        self.specs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A series' definition (cached after the first read of its file).
    /// A series' definition if this process has read it already.
    pub(super) fn cached_spec(&self, id: &str) -> Option<Arc<SeriesSpec>> {
        self.lock_specs().get(id).cloned()
    }

    pub fn spec_of(&self, id: &str) -> Result<Arc<SeriesSpec>> {
        if let Some(spec) = self.cached_spec(id) {
            return Ok(spec);
        }
        let conn = self.reader(id)?;
        let text: String = conn
            .query_row("SELECT definition FROM spec WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()?
            .ok_or_else(|| corrupt("no definition"))?;
        let spec = Arc::new(spec_from_json(&text).ok_or_else(|| corrupt("bad definition"))?);
        self.lock_specs().insert(id.to_string(), spec.clone());
        Ok(spec)
    }

    /// The writer connection of a series: writes from outside sessions take
    /// turns on it instead of spinning on SQLite's lock (kept for reuse,
    /// bounded: see [`WriterPool`]).
    pub fn writer(&self, id: &str) -> Result<SharedWriter> {
        self.writers.get(id, || self.open_writer(id))
    }
}

/// A definition as a series file stores it.
pub(crate) fn spec_to_json(spec: &SeriesSpec) -> String {
    serde_json::json!({
        "resolution": spec.resolution as i32,
        "unit": spec.unit,
        "curve": spec.curve as i32,
        "time_zone": spec.time_zone,
    })
    .to_string()
}

/// A definition from a series file.
pub(crate) fn spec_from_json(text: &str) -> Option<SeriesSpec> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    Some(SeriesSpec {
        resolution: crate::store::known(value["resolution"].as_i64()? as i32)?,
        unit: value["unit"].as_str()?.to_string(),
        curve: match value["curve"].as_i64()? {
            2 => Curve::PiecewiseLinear,
            _ => Curve::Staircase,
        },
        time_zone: value["time_zone"].as_str().map(str::to_string),
    })
}
