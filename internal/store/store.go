// Package store keeps banger's state in SQLite: images, VMs and
// workspaces. It uses a pure-Go driver, so bangerd needs no cgo.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"banger/internal/model"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// DB is banger's database: one connection that writes (SQLite has one
// writer at a time; queueing writers here instead of in SQLite's busy
// handler, which sleeps milliseconds between tries, keeps concurrent
// requests fast) and a pool that reads (WAL readers never wait for the
// writer). Statements are prepared once and reused.
type DB struct {
	db *sql.DB // the writer: every change and the migrations
	r  *sql.DB // readers

	mu    sync.Mutex
	stmts map[*sql.DB]map[string]*sql.Stmt

	// gen counts the changes made (see Generation).
	gen atomic.Uint64
}

// Generation counts the changes made through this DB. It moves after
// each change returns (committed or failed), so a result read after
// Generation returned g reflects every change made before g: a caller
// that keeps what it read under g may reuse it while Generation is
// still g. Only this process writes the database.
func (s *DB) Generation() uint64 { return s.gen.Load() }

// readers is the size of the read pool.
const readers = 4

// Open opens (creating if needed) the database at path and applies any
// pending migrations.
func Open(ctx context.Context, path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// The database holds every user's VMs: root only, whatever the
	// directory above allows. SQLite gives its -wal and -shm files the
	// database file's mode.
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open database: %w", err)
		}
	}
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600); err == nil {
		f.Close()
	} else {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// WAL lets readers (the CLI's list calls) proceed while a writer holds
	// the lock; synchronous=NORMAL syncs the WAL at checkpoints, not at
	// every commit (a commit survives a crash of the daemon; a power cut
	// may lose the last ones, never corrupt the file); the busy timeout
	// makes a connection wait for another instead of failing with
	// SQLITE_BUSY; foreign keys keep a VM from outliving its image row.
	// All are per connection, hence the DSN pragmas.
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	// One writer, kept open for good: a new connection costs a file open
	// and a schema parse.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)
	s := &DB{db: db, stmts: map[*sql.DB]map[string]*sql.Stmt{}}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	// Readers are opened after the migrations, so they never see an old
	// schema. query_only makes any write through them an error.
	r, err := sql.Open("sqlite", dsn+"&_pragma=query_only(1)")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open database: %w", err)
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	r.SetConnMaxLifetime(0)
	r.SetConnMaxIdleTime(0)
	s.r = r
	return s, nil
}

// Close closes the database.
func (s *DB) Close() error {
	s.mu.Lock()
	for _, m := range s.stmts {
		for _, st := range m {
			st.Close()
		}
	}
	s.stmts = map[*sql.DB]map[string]*sql.Stmt{}
	s.mu.Unlock()
	var err error
	if s.r != nil {
		err = s.r.Close()
	}
	return errors.Join(err, s.db.Close())
}

// maxStmts bounds the statements kept prepared per pool; the store's
// queries are a fixed set well under it.
const maxStmts = 64

// prepared returns q prepared on pool, preparing it the first time.
func (s *DB) prepared(ctx context.Context, pool *sql.DB, q string) (*sql.Stmt, error) {
	s.mu.Lock()
	st, ok := s.stmts[pool][q]
	s.mu.Unlock()
	if ok {
		return st, nil
	}
	st, err := pool.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.stmts[pool]
	if m == nil {
		m = map[string]*sql.Stmt{}
		s.stmts[pool] = m
	}
	if old, ok := m[q]; ok {
		// Another request prepared it meanwhile.
		st.Close()
		return old, nil
	}
	if len(m) < maxStmts {
		m[q] = st
	}
	return st, nil
}

// exec runs a change on the writer.
func (s *DB) exec(ctx context.Context, q string, args ...any) (sql.Result, error) {
	defer s.gen.Add(1)
	st, err := s.prepared(ctx, s.db, q)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// query runs a query on the read pool.
func (s *DB) query(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	st, err := s.prepared(ctx, s.r, q)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// queryRow runs a one-row query on the read pool.
func (s *DB) queryRow(ctx context.Context, q string, args ...any) *sql.Row {
	st, err := s.prepared(ctx, s.r, q)
	if err != nil {
		// The query itself reports the error.
		return s.r.QueryRowContext(ctx, q, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

func (s *DB) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	names, err := fs.Glob(migrationFS, "migrations/*.sql")
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	sort.Strings(names)
	for _, name := range names {
		base := filepath.Base(name)
		version, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil {
			return fmt.Errorf("migrate: bad migration name %s", base)
		}
		if err := s.applyMigration(ctx, version, name); err != nil {
			return err
		}
	}
	return nil
}

// noForeignKeys marks a migration that rebuilds a table other tables
// refer to: it runs with foreign keys off (they cannot be switched inside
// a transaction), and the keys are checked before it commits.
const noForeignKeys = "-- banger:foreign_keys=off"

// applyMigration runs one migration in its own transaction, unless it is
// already recorded.
func (s *DB) applyMigration(ctx context.Context, version int, name string) (err error) {
	body, err := migrationFS.ReadFile(name)
	if err != nil {
		return fmt.Errorf("migrate %d: %w", version, err)
	}
	// One connection for the whole migration: the foreign key pragma is
	// per connection.
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrate %d: %w", version, err)
	}
	defer conn.Close()
	fkOff := strings.HasPrefix(string(body), noForeignKeys)
	if fkOff {
		if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
			return fmt.Errorf("migrate %d: %w", version, err)
		}
		defer func() {
			if _, ferr := conn.ExecContext(context.WithoutCancel(ctx), `PRAGMA foreign_keys = ON`); ferr != nil && err == nil {
				err = fmt.Errorf("migrate %d: %w", version, ferr)
			}
		}()
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate %d: %w", version, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = ?`, version).Scan(&n); err != nil {
		return fmt.Errorf("migrate %d: %w", version, err)
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, string(body)); err != nil {
		return fmt.Errorf("migrate %d (%s): %w", version, filepath.Base(name), err)
	}
	if fkOff {
		rows, err := tx.QueryContext(ctx, `PRAGMA foreign_key_check`)
		if err != nil {
			return fmt.Errorf("migrate %d: %w", version, err)
		}
		bad := rows.Next()
		rows.Close()
		if bad {
			return fmt.Errorf("migrate %d (%s): it would break foreign keys; the database is unchanged", version, filepath.Base(name))
		}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)`, version, formatTime(model.Now())); err != nil {
		return fmt.Errorf("migrate %d: %w", version, err)
	}
	return tx.Commit()
}

// SchemaVersion returns the highest applied migration.
func (s *DB) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.queryRow(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v)
	return int(v.Int64), err
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func parseTime(s string) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// mapError turns driver errors into domain errors: a unique or foreign key
// violation is a conflict.
func mapError(err error, what string) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return &model.Error{Code: model.ECONFLICT, Message: fmt.Sprintf("%s already exists", what), Err: err}
		case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY, sqlite3.SQLITE_CONSTRAINT_TRIGGER:
			return &model.Error{Code: model.ECONFLICT, Message: fmt.Sprintf("%s is still in use", what), Err: err}
		}
		if se.Code()&0xff == sqlite3.SQLITE_FULL {
			return &model.Error{Code: model.EUNAVAILABLE, Message: "the state directory's disk is full; free space and retry", Err: err}
		}
	}
	return err
}
