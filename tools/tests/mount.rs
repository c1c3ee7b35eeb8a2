//! `blobfs mount` / `blobfs umount` and the `mount.fuse.blobfs` helper, run as a user
//! would: foreground with signals, background, mount(8)'s calling convention, a killed
//! server. These mount for real and need root and /dev/fuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{FileSystem, FsOptions, ROOT_INO};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blobfs");

fn require_fuse() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the mount tests need root (they mount with mount(2)); euid is {euid}"
    );
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!("the mount tests need /dev/fuse ({e}); modprobe fuse, or run where FUSE is");
    }
}

/// A formatted image and a mountpoint; on drop, whatever is still mounted is detached and
/// every server started is killed.
struct Env {
    dir: tempfile::TempDir,
    img: PathBuf,
    mnt: PathBuf,
    children: Vec<Child>,
    pids: Vec<i32>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for m in [self.mnt.clone(), self.dir.path().join("mnt2")] {
            while mounted_any(&m) {
                let _ = blobfs_fuse::unmount(&m, blobfs_fuse::Unmount::Lazy);
            }
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for &p in &self.pids {
            // SAFETY: kill with a pid we started; at worst it is gone (ESRCH).
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

fn setup() -> Env {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fs.img");
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let o = run(
        dir.path(),
        &["mkfs", img.to_str().unwrap(), "--size", "64M"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    Env {
        dir,
        img,
        mnt,
        children: Vec::new(),
        pids: Vec::new(),
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs blobfs, asserting success; returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    assert!(
        o.status.success(),
        "blobfs {args:?}: {:?}\n{}{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Runs blobfs, asserting a clean failure; returns stderr.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "blobfs {args:?}: {err}");
    assert!(err.starts_with("blobfs: error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn mounted_any(mnt: &Path) -> bool {
    blobfs_fuse::find_mount(mnt)
        .ok()
        .flatten()
        .is_some_and(|m| m.fstype.starts_with("fuse"))
}

fn mounted(mnt: &Path) -> bool {
    blobfs_fuse::find_mount(mnt)
        .ok()
        .flatten()
        .is_some_and(|m| m.fstype == blobfs_fuse::FSTYPE)
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(c: &mut Child, timeout: Duration) -> ExitStatus {
    let until = Instant::now() + timeout;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < until, "the server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill with a pid this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// The server pid from `blobfs mount --background` output.
fn server_pid(out: &str) -> i32 {
    out.split("server pid ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no server pid in {out:?}"))
}

/// Opens the unmounted image, checks it and reads a file by path.
fn offline(img: &Path, path: &str) -> Option<Vec<u8>> {
    let dev = driver::uring::UringDevice::open(
        img.to_str().unwrap(),
        &driver::uring::UringOptions {
            lba_size: None,
            read_only: true,
        },
    )
    .unwrap();
    let fs = FileSystem::open(
        Arc::new(dev),
        FsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = fs.lookup(ino, part.as_bytes()).ok()?.ino;
    }
    let size = fs.getattr(ino).unwrap().size;
    Some(fs.read(ino, 0, size as usize).unwrap())
}

#[test]
fn foreground_mount_ends_cleanly_on_sigint_and_sigterm() {
    let mut env = setup();
    let (d, img, mnt) = (
        env.dir.path().to_path_buf(),
        env.img.clone(),
        env.mnt.clone(),
    );
    let spawn = || {
        Command::new(BIN)
            .args(["mount", img.to_str().unwrap(), mnt.to_str().unwrap()])
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // SIGINT (Ctrl-C).
    env.children.push(spawn());
    wait_for("the mount", Duration::from_secs(10), || mounted(&mnt));
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/a"), vec![7u8; 100_000]).unwrap();
    let c = env.children.last_mut().unwrap();
    signal(c.id(), libc::SIGINT);
    let st = wait_exit(c, Duration::from_secs(20));
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(err.contains("mounted at"), "{err}");
    assert!(err.contains("closed cleanly"), "{err}");
    assert!(!mounted(&mnt));
    assert_eq!(offline(&img, "d/a").unwrap(), vec![7u8; 100_000]);

    // SIGTERM while busy: detached at once, closed when the last user lets go.
    env.children.push(spawn());
    wait_for("the mount", Duration::from_secs(10), || mounted(&mnt));
    let f = File::open(mnt.join("d/a")).unwrap();
    fs::write(mnt.join("b"), b"bee").unwrap();
    let c = env.children.last_mut().unwrap();
    signal(c.id(), libc::SIGTERM);
    wait_for("the lazy unmount", Duration::from_secs(10), || {
        !mounted(&mnt)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        c.try_wait().unwrap().is_none(),
        "exited while a file is open"
    );
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 500).unwrap();
    assert_eq!(buf, [7u8; 10]);
    drop(f);
    let st = wait_exit(c, Duration::from_secs(20));
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(err.contains("busy: detached"), "{err}");
    assert!(err.contains("closed cleanly"), "{err}");
    assert_eq!(offline(&img, "b").unwrap(), b"bee");
}

#[test]
fn background_mount_and_umount() {
    let mut env = setup();
    let d = env.dir.path().to_path_buf();
    let (img, mnt) = (env.img.to_str().unwrap().to_string(), env.mnt.clone());
    let m = mnt.to_str().unwrap();
    // A relative image path works: the server runs in / but gets the absolute path.
    let out = ok(&d, &["mount", "fs.img", m, "--background", "-o", "noatime"]);
    let pid = server_pid(&out);
    env.pids.push(pid);
    assert!(mounted(&mnt), "not mounted when --background returned");
    let entry = blobfs_fuse::find_mount(&mnt).unwrap().unwrap();
    assert_eq!(entry.source, img);
    assert!(entry.options.contains("noatime"), "{entry:?}");
    fs::write(mnt.join("f"), b"background").unwrap();

    // Mounting again, here or elsewhere, is refused.
    let err = fails(&d, &["mount", &img, m, "--background"]);
    assert!(err.contains("already a BlobFS mount"), "{err}");
    let mnt2 = d.join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let err = fails(&d, &["mount", &img, mnt2.to_str().unwrap(), "--background"]);
    assert!(err.contains("in use by another process"), "{err}");
    assert!(!mounted(&mnt2));
    // Nor can the demo or mkfs touch it meanwhile.
    let err = fails(&d, &["mkfs", &img, "--force"]);
    assert!(err.contains("in use"), "{err}");

    // A busy mount is refused by umount, unless --lazy.
    let f = File::open(mnt.join("f")).unwrap();
    let err = fails(&d, &["umount", m]);
    assert!(err.contains("busy"), "{err}");
    drop(f);
    let out = ok(&d, &["umount", m]);
    assert!(out.contains("unmounted"), "{out}");
    assert!(!mounted(&mnt));
    // umount waited for the server to close the store.
    wait_for("the server to exit", Duration::from_secs(5), || !alive(pid));
    assert_eq!(offline(&env.img, "f").unwrap(), b"background");
    let err = fails(&d, &["umount", m]);
    assert!(err.contains("not mounted"), "{err}");
    let err = fails(&d, &["umount", d.to_str().unwrap()]);
    assert!(
        err.contains("not mounted") || err.contains("not a BlobFS mount"),
        "{err}"
    );

    // Read-only.
    let out = ok(&d, &["mount", &img, m, "--background", "-o", "ro"]);
    env.pids.push(server_pid(&out));
    assert_eq!(fs::read(mnt.join("f")).unwrap(), b"background");
    let e = fs::write(mnt.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    ok(&d, &["umount", m]);

    // --lazy with a file open.
    let out = ok(&d, &["mount", &img, m, "--background"]);
    let pid = server_pid(&out);
    env.pids.push(pid);
    let f = File::open(mnt.join("f")).unwrap();
    let out = ok(&d, &["umount", "--lazy", m]);
    assert!(out.contains("detached"), "{out}");
    assert!(!mounted(&mnt));
    assert!(alive(pid));
    drop(f);
    wait_for("the server to exit", Duration::from_secs(10), || {
        !alive(pid)
    });
    assert_eq!(offline(&env.img, "f").unwrap(), b"background");
}

#[test]
fn mount_reports_mistakes() {
    let env = setup();
    let d = env.dir.path();
    let (img, m) = (env.img.to_str().unwrap(), env.mnt.to_str().unwrap());
    for bg in [true, false] {
        let with = |args: &[&str]| {
            let mut v = args.to_vec();
            if bg {
                v.push("--background");
            }
            fails(d, &v)
        };
        let err = with(&["mount", img, "no/such/dir"]);
        assert!(err.contains("no such directory"), "{err}");
        let err = with(&["mount", img, img]);
        assert!(err.contains("not a directory"), "{err}");
        let err = with(&["mount", img, m, "-o", "frobnicate"]);
        assert!(err.contains("unknown mount option \"frobnicate\""), "{err}");
        let err = with(&["mount", img, m, "-o", "allow_other,allow_root"]);
        assert!(err.contains("exclude each other"), "{err}");
        let err = with(&["mount", "missing.img", m]);
        assert!(err.contains("missing.img"), "{err}");
        assert!(!mounted(&env.mnt));
    }
    let o = run(d, &["mount", img, m, "--foreground", "--background"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn helper_follows_the_mount8_convention() {
    let mut env = setup();
    let d = env.dir.path().to_path_buf();
    let (img, mnt) = (env.img.to_str().unwrap().to_string(), env.mnt.clone());
    let m = mnt.to_str().unwrap();
    let helper = d.join("mount.fuse.blobfs");
    std::os::unix::fs::symlink(BIN, &helper).unwrap();
    let call = |args: &[&str]| {
        Command::new(&helper)
            .args(args)
            .current_dir(&d)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // -f (fake) does nothing; unknown options fail unless -s (sloppy).
    let o = call(&[&img, m, "-f", "-o", "rw"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!mounted(&mnt));
    // Quiet unless -v, as mount helpers are.
    let o = call(&[&img, m]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
    assert!(mounted(&mnt));
    ok(&d, &["umount", m]);
    let o = call(&[&img, m, "-o", "rw,frobnicate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("frobnicate"));
    let o = call(&[&img, m, "-o", "wrong", "-t", "ext4"]);
    assert_eq!(o.status.code(), Some(1));

    // What mount(8) runs for an fstab line `IMG MNT fuse.blobfs defaults,noatime,_netdev`.
    let o = call(&[
        &img,
        m,
        "-snv",
        "-o",
        "rw,noatime,nodev,nosuid,_netdev,x-systemd.automount,frobnicate",
        "-t",
        "fuse.blobfs",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    env.pids.push(server_pid(&text(&o.stdout)));
    assert!(mounted(&mnt), "the helper returned before the mount was up");
    let entry = blobfs_fuse::find_mount(&mnt).unwrap().unwrap();
    assert!(entry.options.contains("noatime"), "{entry:?}");
    fs::write(mnt.join("via-helper"), b"h").unwrap();
    // umount(8) unmounts it like any mount; the server then closes the store.
    let st = Command::new("umount").arg(m).status().unwrap();
    assert!(st.success());
    assert!(!mounted(&mnt));
    let pid = *env.pids.last().unwrap();
    wait_for("the server to exit", Duration::from_secs(10), || {
        !alive(pid)
    });
    assert_eq!(offline(&env.img, "via-helper").unwrap(), b"h");

    // The old fstab spelling `blobfs#IMAGE`.
    let o = call(&[&format!("blobfs#{img}"), m, "-v", "-o", "ro"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    env.pids.push(server_pid(&text(&o.stdout)));
    assert_eq!(fs::read(mnt.join("via-helper")).unwrap(), b"h");
    ok(&d, &["umount", m]);

    // With the helper installed (make install), mount(8) itself and fstab work.
    let installed = Path::new("/sbin/mount.fuse.blobfs")
        .canonicalize()
        .is_ok_and(|p| p == Path::new(BIN).canonicalize().unwrap());
    if !installed {
        eprintln!("note: /sbin/mount.fuse.blobfs is not this build; mount(8) not tried");
        return;
    }
    let st = Command::new("mount")
        .args(["-t", "fuse.blobfs", &img, m, "-o", "noatime"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(mnt.join("via-helper")).unwrap(), b"h");
    ok(&d, &["umount", m]);
    let fstab = d.join("fstab");
    fs::write(
        &fstab,
        format!("{img} {m} fuse.blobfs defaults,noatime 0 0\n"),
    )
    .unwrap();
    let st = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(m)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(mounted(&mnt));
    ok(&d, &["umount", m]);
}

#[test]
fn a_killed_server_leaves_a_dead_mount_that_mount_clears() {
    let mut env = setup();
    let d = env.dir.path().to_path_buf();
    let (img, mnt) = (env.img.to_str().unwrap().to_string(), env.mnt.clone());
    let m = mnt.to_str().unwrap();
    let out = ok(&d, &["mount", &img, m, "--background"]);
    let pid = server_pid(&out);
    env.pids.push(pid);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.join("durable"))
        .unwrap();
    f.write_all_at(b"fsynced before the crash", 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // SAFETY: kill the server this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server to die", Duration::from_secs(10), || !alive(pid));
    assert!(blobfs_fuse::is_stale(&mnt), "no dead mount left behind");
    // mount clears the dead mount and recovers the store.
    let out = ok(&d, &["mount", &img, m, "--background"]);
    env.pids.push(server_pid(&out));
    assert_eq!(
        fs::read(mnt.join("durable")).unwrap(),
        b"fsynced before the crash"
    );
    ok(&d, &["umount", m]);
    assert!(!mounted_any(&mnt));
    assert_eq!(
        offline(&env.img, "durable").unwrap(),
        b"fsynced before the crash"
    );
}
