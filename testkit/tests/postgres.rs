use std::path::Path;
use std::process::Command;
use std::time::Instant;

use testkit::postgres::PgServer;

/// Does any process's command line mention `dir`?
fn process_of(dir: &Path) -> bool {
    Command::new("pgrep")
        .arg("-f")
        .arg(dir)
        .output()
        .expect("pgrep")
        .status
        .success()
}

#[test]
fn two_servers_at_once() {
    let t = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::start);
        let b = s.spawn(PgServer::start);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    eprintln!("two servers started in parallel in {:?}", t.elapsed());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    for s in [&a, &b] {
        assert_eq!(s.psql("select 1").unwrap(), "1");
        assert_eq!(
            s.url(),
            format!("postgres://postgres@127.0.0.1:{}/kmesh", s.port())
        );
        assert_eq!(s.psql("select current_database()").unwrap(), "kmesh");
        assert!(s.log_path().is_file());
    }
}

#[test]
fn start_time_of_one_server() {
    let t = Instant::now();
    let s = PgServer::start().unwrap();
    eprintln!(
        "one server (initdb + start + createdb) in {:?}",
        t.elapsed()
    );
    assert_eq!(s.psql("select 1").unwrap(), "1");
}

#[test]
fn stop_then_start_again_keeps_rows() {
    let mut s = PgServer::start().unwrap();
    let port = s.port();
    s.psql("create table t (x int); insert into t values (1), (2), (3);")
        .unwrap();
    s.stop().unwrap();
    assert!(!s.is_running());
    assert!(
        s.psql("select 1").is_err(),
        "psql works on a stopped server"
    );
    s.stop().unwrap(); // a no-op once stopped
    s.start_again().unwrap();
    assert_eq!(s.port(), port);
    assert_eq!(s.psql("select sum(x) from t").unwrap(), "6");
    assert!(s.start_again().is_err(), "a running server started again");
}

#[test]
fn kill_then_start_again_recovers() {
    let mut s = PgServer::start().unwrap();
    s.psql("create table t (x int); insert into t select generate_series(1, 1000);")
        .unwrap();
    s.kill().unwrap();
    assert!(!s.is_running());
    s.start_again().unwrap();
    assert_eq!(s.psql("select count(*) from t").unwrap(), "1000");
    let log = std::fs::read_to_string(s.log_path()).unwrap();
    assert!(
        log.contains("not properly shut down"),
        "no crash recovery in the log:\n{log}"
    );
}

#[test]
fn errors_carry_the_log_tail() {
    let s = PgServer::start().unwrap();
    let err = format!("{}", s.psql("select no_such_column").unwrap_err());
    assert!(err.contains("last 20 lines of"), "{err}");
    assert!(err.contains("no_such_column"), "{err}");
    assert!(err.contains("ERROR:"), "{err}");
}

#[test]
fn multiple_statements_return_all_rows() {
    let s = PgServer::start().unwrap();
    let out = s
        .psql("create table t (a int, b text); insert into t values (1, 'x'), (2, 'y'); select * from t order by a;")
        .unwrap();
    assert_eq!(out, "1|x\n2|y");
}

#[test]
fn drop_leaves_no_process_and_no_directory() {
    let s = PgServer::start().unwrap();
    let data = s.data_dir().to_path_buf();
    assert!(
        process_of(&data),
        "no postgres process for {}",
        data.display()
    );
    drop(s);
    assert!(
        !process_of(&data),
        "postgres still runs for {}",
        data.display()
    );
    assert!(!data.exists());
}

#[test]
fn panicking_test_leaves_no_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let s = PgServer::start().unwrap();
        tx.send(s.data_dir().to_path_buf()).unwrap();
        panic!("test failure with a running server");
    })
    .join();
    assert!(result.is_err());
    let data = rx.recv().unwrap();
    assert!(
        !process_of(&data),
        "postgres still runs for {}",
        data.display()
    );
    assert!(!data.exists());
}

#[test]
fn start_again_on_a_taken_port_fails_with_the_log_tail() {
    let mut s = PgServer::start().unwrap();
    s.stop().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", s.port())).unwrap();
    let err = format!("{}", s.start_again().unwrap_err());
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains("last 20 lines of"), "{err}");
    assert!(!s.is_running());
    drop(squatter);
    s.start_again().unwrap();
    assert_eq!(s.psql("select 1").unwrap(), "1");
}
