//! BlobFS mounted with FUSE in this process, driven through the kernel with std::fs, libc
//! calls and shell tools; then unmounted, checked and mounted again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{errno, fixture, pattern, sh};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cstr(p);
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `s` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    s
}

fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> Result<(), i32> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Sorted names in a directory.
fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn files_directories_links_and_errors() {
    let fx = fixture(256 << 20);
    let mut m = fx.mount("");
    assert!(ls(&fx.mnt).is_empty());
    let root = fs::metadata(&fx.mnt).unwrap();
    assert_eq!(root.ino(), 1);
    assert!(root.is_dir());

    // Create, write, read, append.
    fs::write(fx.p("hello.txt"), b"hello, world\n").unwrap();
    assert_eq!(fs::read(fx.p("hello.txt")).unwrap(), b"hello, world\n");
    let mut f = OpenOptions::new()
        .append(true)
        .open(fx.p("hello.txt"))
        .unwrap();
    f.write_all(b"second line\n").unwrap();
    drop(f);
    assert_eq!(
        fs::read_to_string(fx.p("hello.txt")).unwrap(),
        "hello, world\nsecond line\n"
    );
    let md = fs::metadata(fx.p("hello.txt")).unwrap();
    assert_eq!(md.len(), 25);
    assert_eq!(md.nlink(), 1);
    assert_eq!((md.uid(), md.gid()), (0, 0));

    // A bigger file written with large writes, read back in odd pieces.
    let big = pattern(1, 5 << 20 | 123);
    fs::write(fx.p("big.bin"), &big).unwrap();
    let mut f = File::open(fx.p("big.bin")).unwrap();
    let mut buf = vec![0u8; 777_777];
    f.seek(SeekFrom::Start(1_000_003)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, big[1_000_003..1_000_003 + 777_777]);
    drop(f);
    assert_eq!(fs::read(fx.p("big.bin")).unwrap(), big);

    // Sparse file: holes read as zeroes.
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(fx.p("sparse"))
        .unwrap();
    f.write_all_at(b"tail", 10 << 20).unwrap();
    let mut hole = vec![1u8; 8192];
    f.read_exact_at(&mut hole, 3 << 20).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    assert_eq!(f.metadata().unwrap().len(), (10 << 20) + 4);
    // Truncate: shrink and grow (the grown part reads as zeroes).
    f.set_len(2).unwrap();
    f.set_len(100).unwrap();
    let mut v = Vec::new();
    (&f).read_to_end(&mut v).unwrap();
    assert_eq!(v.len(), 100);
    assert!(v.iter().all(|&b| b == 0));
    drop(f);

    // Directories.
    fs::create_dir(fx.p("a")).unwrap();
    fs::create_dir_all(fx.p("a/b/c")).unwrap();
    fs::write(fx.p("a/b/file"), b"in b").unwrap();
    assert_eq!(ls(&fx.p("a/b")), ["c", "file"]);
    assert_eq!(fs::metadata(fx.p("a")).unwrap().nlink(), 3);
    let mut names: Vec<String> = Vec::new();
    // read_dir hides . and ..; ls -a shows them.
    for l in sh(&format!("ls -a {}", fx.p("a").display())).lines() {
        names.push(l.to_string());
    }
    assert_eq!(names, [".", "..", "b"]);

    // Many entries: readdir pages through them.
    fs::create_dir(fx.p("many")).unwrap();
    for i in 0..600 {
        File::create(fx.p(&format!("many/entry-with-a-longish-name-{i:04}"))).unwrap();
    }
    let listed = ls(&fx.p("many"));
    assert_eq!(listed.len(), 600);
    assert_eq!(listed[0], "entry-with-a-longish-name-0000");
    assert_eq!(listed[599], "entry-with-a-longish-name-0599");

    // Rename: within a directory, replacing a target, across directories.
    fs::rename(fx.p("hello.txt"), fx.p("greeting.txt")).unwrap();
    assert!(!fx.p("hello.txt").exists());
    fs::write(fx.p("victim"), b"old").unwrap();
    fs::rename(fx.p("greeting.txt"), fx.p("victim")).unwrap();
    assert_eq!(
        fs::read_to_string(fx.p("victim")).unwrap(),
        "hello, world\nsecond line\n"
    );
    fs::rename(fx.p("victim"), fx.p("a/b/c/moved")).unwrap();
    assert_eq!(ls(&fx.p("a/b/c")), ["moved"]);
    fs::rename(fx.p("a/b/c"), fx.p("c2")).unwrap();
    assert_eq!(fs::metadata(fx.p("a/b")).unwrap().nlink(), 2);
    assert_eq!(ls(&fx.p("c2")), ["moved"]);
    // renameat2: NOREPLACE refuses an existing target; EXCHANGE swaps.
    fs::write(fx.p("x"), b"x").unwrap();
    fs::write(fx.p("y"), b"y").unwrap();
    assert_eq!(
        renameat2(&fx.p("x"), &fx.p("y"), libc::RENAME_NOREPLACE),
        Err(libc::EEXIST)
    );
    renameat2(&fx.p("x"), &fx.p("z"), libc::RENAME_NOREPLACE).unwrap();
    renameat2(&fx.p("z"), &fx.p("y"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(fx.p("z")).unwrap(), b"y");
    assert_eq!(fs::read(fx.p("y")).unwrap(), b"x");
    assert_eq!(
        renameat2(&fx.p("y"), &fx.p("nothere"), libc::RENAME_EXCHANGE),
        Err(libc::ENOENT)
    );

    // Hard links.
    fs::hard_link(fx.p("y"), fx.p("a/y-link")).unwrap();
    let (m1, m2) = (
        fs::metadata(fx.p("y")).unwrap(),
        fs::metadata(fx.p("a/y-link")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino());
    assert_eq!(m2.nlink(), 2);
    fs::remove_file(fx.p("y")).unwrap();
    assert_eq!(fs::metadata(fx.p("a/y-link")).unwrap().nlink(), 1);
    assert_eq!(fs::read(fx.p("a/y-link")).unwrap(), b"x");

    // Symlinks.
    std::os::unix::fs::symlink("a/b/file", fx.p("sym")).unwrap();
    assert_eq!(fs::read_link(fx.p("sym")).unwrap(), Path::new("a/b/file"));
    assert_eq!(fs::read(fx.p("sym")).unwrap(), b"in b");
    assert!(fs::symlink_metadata(fx.p("sym"))
        .unwrap()
        .file_type()
        .is_symlink());
    std::os::unix::fs::symlink("/nowhere/at/all", fx.p("dangling")).unwrap();
    assert_eq!(errno(fs::read(fx.p("dangling"))), libc::ENOENT);

    // chmod, chown, utimes.
    fs::set_permissions(fx.p("z"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(fx.p("z")).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(fx.p("z"), Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(fx.p("z")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    sh(&format!(
        "touch -d '2001-02-03 04:05:06' {}",
        fx.p("z").display()
    ));
    assert_eq!(fs::metadata(fx.p("z")).unwrap().mtime(), 981_173_106);
    sh(&format!("touch {}", fx.p("z").display()));
    assert!(fs::metadata(fx.p("z")).unwrap().mtime() > 1_600_000_000);
    // New files get the creator's owner and the umask-ed mode.
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o666)
        .open(fx.p("mode-test"))
        .unwrap();
    drop(f);
    let umask = {
        // SAFETY: umask has no preconditions; the old value is put back at once.
        let old = unsafe { libc::umask(0o022) };
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        old
    };
    assert_eq!(
        fs::metadata(fx.p("mode-test")).unwrap().mode() & 0o777,
        0o666 & !umask
    );

    // Errors.
    assert_eq!(errno(fs::read(fx.p("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::create_dir(fx.p("a"))), libc::EEXIST);
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(fx.p("z"))
        ),
        libc::EEXIST
    );
    assert_eq!(errno(fs::remove_dir(fx.p("a"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::remove_file(fx.p("a"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(fx.p("z"))), libc::ENOTDIR);
    assert_eq!(errno(File::create(fx.p("z/inside"))), libc::ENOTDIR);
    assert_eq!(errno(fs::rename(fx.p("a"), fx.p("c2"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::rename(fx.p("z"), fx.p("c2"))), libc::EISDIR);
    assert_eq!(
        errno(fs::rename(fx.p("a"), fx.p("a/b/inside"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(File::create(fx.p(&"n".repeat(256)))),
        libc::ENAMETOOLONG
    );
    assert_eq!(errno(fs::write(fx.p("a"), b"")), libc::EISDIR);
    fs::remove_dir(fx.p("many")).unwrap_err();
    for e in fs::read_dir(fx.p("many")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
    fs::remove_dir(fx.p("many")).unwrap();

    // fsync and fdatasync reach the filesystem.
    let f = OpenOptions::new().write(true).open(fx.p("z")).unwrap();
    f.write_all_at(b"synced", 0).unwrap();
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    File::open(&fx.mnt).unwrap().sync_all().unwrap();
    drop(f);

    let before = ls(&fx.mnt);
    m.unmount().unwrap();
    assert!(!fx.p("z").exists(), "still mounted after unmount");
    fx.check_clean();

    // Everything is still there after a remount.
    let mut m = fx.mount("");
    assert_eq!(ls(&fx.mnt), before);
    assert_eq!(fs::read(fx.p("big.bin")).unwrap(), big);
    assert_eq!(fs::read(fx.p("z")).unwrap(), b"synced");
    assert_eq!(fs::metadata(fx.p("z")).unwrap().uid(), 1234);
    assert_eq!(fs::read_link(fx.p("sym")).unwrap(), Path::new("a/b/file"));
    assert_eq!(fs::read(fx.p("a/y-link")).unwrap(), b"x");
    assert_eq!(fs::read(fx.p("c2/moved")).unwrap().len(), 25);
    assert_eq!(fs::metadata(fx.p("sparse")).unwrap().len(), 100);
    m.unmount().unwrap();
    fx.check_clean();
}

#[test]
fn unlinked_open_file_lives_until_closed() {
    let fx = fixture(128 << 20);
    let mut m = fx.mount("");
    let free0 = statvfs(&fx.mnt).f_bfree;
    let data = pattern(7, 8 << 20);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(fx.p("doomed"))
        .unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    let sync_root = || File::open(&fx.mnt).unwrap().sync_all().unwrap();
    let used = free0 - statvfs(&fx.mnt).f_bfree;
    assert!(
        used >= (8 << 20) / 4096,
        "8 MiB written, {used} blocks used"
    );
    fs::remove_file(fx.p("doomed")).unwrap();
    assert!(!fx.p("doomed").exists());
    // The open descriptor still reads (and writes) the file.
    let mut got = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got, data);
    f.write_all_at(b"still writable", 0).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    sync_root();
    assert!(
        free0 - statvfs(&fx.mnt).f_bfree >= used,
        "space freed while the file is open"
    );
    drop(f);
    // The last close deletes it; the space comes back once that is committed.
    sync_root();
    let after = statvfs(&fx.mnt).f_bfree;
    assert!(
        free0 - after < used / 4,
        "space not freed after close: free {free0} before, {after} after"
    );
    m.unmount().unwrap();
    fx.check_clean();
}

#[test]
fn xattrs_with_the_size_probe() {
    let fx = fixture(64 << 20);
    let mut m = fx.mount("");
    let f = fx.p("f");
    fs::write(&f, b"data").unwrap();
    fs::create_dir(fx.p("d")).unwrap();
    xattr::set(&f, "user.color", b"blue").unwrap();
    xattr::set(&f, "user.empty", b"").unwrap();
    let long = pattern(3, 3000);
    xattr::set(&f, "user.long", &long).unwrap();
    xattr::set(fx.p("d"), "user.on-dir", b"yes").unwrap();
    assert_eq!(xattr::get(&f, "user.color").unwrap().unwrap(), b"blue");
    assert_eq!(xattr::get(&f, "user.empty").unwrap().unwrap(), b"");
    assert_eq!(xattr::get(&f, "user.long").unwrap().unwrap(), long);
    assert_eq!(xattr::get(&f, "user.none").unwrap(), None);
    assert_eq!(
        xattr::get(fx.p("d"), "user.on-dir").unwrap().unwrap(),
        b"yes"
    );
    let mut names: Vec<String> = xattr::list(&f)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["user.color", "user.empty", "user.long"]);

    // The raw protocol: size 0 asks for the size; a small buffer is ERANGE.
    let (cp, cn) = (cstr(&f), CString::new("user.long").unwrap());
    // SAFETY: valid NUL-terminated strings; a null buffer with size 0 is the size probe.
    let need = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(need, 3000);
    let mut small = [0u8; 10];
    // SAFETY: `small` is a writable buffer of the size given.
    let rc = unsafe {
        libc::getxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    // SAFETY: size probe of the name list.
    let list_need = unsafe { libc::listxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(
        list_need as usize,
        "user.color\0user.empty\0user.long\0".len()
    );
    // SAFETY: `small` is a writable buffer of the size given.
    let rc = unsafe { libc::listxattr(cp.as_ptr(), small.as_mut_ptr().cast(), small.len()) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );

    // XATTR_CREATE / XATTR_REPLACE.
    let cc = CString::new("user.color").unwrap();
    let setx = |name: &CString, v: &[u8], flags: i32| {
        // SAFETY: valid NUL-terminated strings and a value buffer of the length given.
        let rc = unsafe {
            libc::setxattr(
                cp.as_ptr(),
                name.as_ptr(),
                v.as_ptr().cast(),
                v.len(),
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    };
    assert_eq!(setx(&cc, b"red", libc::XATTR_CREATE), Err(libc::EEXIST));
    setx(&cc, b"red", libc::XATTR_REPLACE).unwrap();
    let cnew = CString::new("user.new").unwrap();
    assert_eq!(setx(&cnew, b"v", libc::XATTR_REPLACE), Err(libc::ENODATA));
    setx(&cnew, b"v", libc::XATTR_CREATE).unwrap();
    xattr::remove(&f, "user.new").unwrap();
    assert_eq!(errno(xattr::remove(&f, "user.new")), libc::ENODATA);
    // trusted.* works for root too.
    xattr::set(&f, "trusted.t", b"1").unwrap();

    m.unmount().unwrap();
    fx.check_clean();
    let mut m = fx.mount("");
    assert_eq!(xattr::get(&f, "user.color").unwrap().unwrap(), b"red");
    assert_eq!(xattr::get(&f, "user.long").unwrap().unwrap(), long);
    assert_eq!(xattr::get(&f, "trusted.t").unwrap().unwrap(), b"1");
    m.unmount().unwrap();
}

#[test]
fn statfs_reports_the_store() {
    let fx = fixture(128 << 20);
    let mut m = fx.mount("");
    let s = statvfs(&fx.mnt);
    assert_eq!(s.f_bsize, 4096);
    assert_eq!(s.f_frsize, 4096);
    assert_eq!(s.f_blocks, (128 << 20) / 4096);
    assert!(s.f_bfree > 0 && s.f_bfree <= s.f_blocks);
    assert!(s.f_bavail <= s.f_bfree);
    assert_eq!(s.f_namemax, 255);
    fs::write(fx.p("four-megs"), pattern(9, 4 << 20)).unwrap();
    File::open(&fx.mnt).unwrap().sync_all().unwrap();
    let s2 = statvfs(&fx.mnt);
    assert!(s.f_bfree - s2.f_bfree >= (4 << 20) / 4096);
    // df(1) shows the mount with its source and type.
    let df = sh(&format!("df -T {}", fx.mnt.display()));
    assert!(df.contains("fuse.blobfs"), "{df}");
    assert!(df.contains(fx.image.to_str().unwrap()), "{df}");
    let entry = blobfs_fuse::find_mount(&fx.mnt).unwrap().unwrap();
    assert_eq!(entry.fstype, blobfs_fuse::FSTYPE);
    assert_eq!(entry.source, fx.image.to_str().unwrap());
    m.unmount().unwrap();
    assert!(blobfs_fuse::find_mount(&fx.mnt).unwrap().is_none());
}

#[test]
fn read_only_mount_refuses_writes() {
    let fx = fixture(64 << 20);
    let mut m = fx.mount("");
    fs::create_dir(fx.p("d")).unwrap();
    fs::write(fx.p("d/f"), b"content").unwrap();
    m.unmount().unwrap();

    let mut m = fx.mount("ro");
    assert_eq!(fs::read(fx.p("d/f")).unwrap(), b"content");
    assert_eq!(errno(fs::write(fx.p("new"), b"x")), libc::EROFS);
    assert_eq!(errno(fs::create_dir(fx.p("nd"))), libc::EROFS);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(fx.p("d/f"))),
        libc::EROFS
    );
    assert_eq!(errno(fs::remove_file(fx.p("d/f"))), libc::EROFS);
    assert_eq!(errno(fs::rename(fx.p("d/f"), fx.p("g"))), libc::EROFS);
    assert_eq!(
        errno(fs::set_permissions(
            fx.p("d/f"),
            fs::Permissions::from_mode(0o600)
        )),
        libc::EROFS
    );
    assert_eq!(errno(xattr::set(fx.p("d/f"), "user.x", b"1")), libc::EROFS);
    let entry = blobfs_fuse::find_mount(&fx.mnt).unwrap().unwrap();
    assert!(entry.options.split(',').any(|o| o == "ro"), "{entry:?}");
    m.unmount().unwrap();
    fx.check_clean();
}

#[test]
fn shell_tools_copy_archive_and_compare() {
    let fx = fixture(256 << 20);
    let src = fx.dir.path().join("src");
    // A tree with nested directories, empty and odd-sized files, names with spaces,
    // symlinks and a hard link.
    fs::create_dir_all(src.join("deep/er/still deeper")).unwrap();
    fs::create_dir(src.join("empty dir")).unwrap();
    fs::write(src.join("empty"), b"").unwrap();
    fs::write(src.join("one byte"), b"1").unwrap();
    fs::write(src.join("deep/page"), pattern(1, 4096)).unwrap();
    fs::write(src.join("deep/er/odd"), pattern(2, 12_345)).unwrap();
    fs::write(src.join("deep/er/still deeper/big"), pattern(3, 3 << 20)).unwrap();
    for i in 0..50 {
        fs::write(
            src.join(format!("deep/er/small-{i}")),
            pattern(i, i as usize * 97),
        )
        .unwrap();
    }
    std::os::unix::fs::symlink("deep/er/odd", src.join("link to odd")).unwrap();
    std::os::unix::fs::symlink("../..", src.join("deep/er/up")).unwrap();
    fs::hard_link(src.join("deep/page"), src.join("page hardlink")).unwrap();
    fs::set_permissions(src.join("deep/page"), fs::Permissions::from_mode(0o600)).unwrap();

    let mut m = fx.mount("");
    let (s, mnt) = (src.display(), fx.mnt.display());
    sh(&format!("cp -a '{s}' '{mnt}/copy'"));
    sh(&format!("diff -r --no-dereference '{s}' '{mnt}/copy'"));
    // find lists the same names and types.
    let listing = |dir: &str| {
        let mut v: Vec<String> = sh(&format!("cd '{dir}' && find . -printf '%y %p %s\\n'"))
            .lines()
            .map(|l| {
                // Directory sizes differ between file systems.
                if l.starts_with("d ") {
                    l.rsplit_once(' ').map(|x| x.0).unwrap_or(l).to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        listing(&src.display().to_string()),
        listing(&format!("{mnt}/copy"))
    );
    // cp -a kept the hard link, modes and times.
    let a = fs::metadata(fx.p("copy/deep/page")).unwrap();
    let b = fs::metadata(fx.p("copy/page hardlink")).unwrap();
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert_eq!(a.mode() & 0o777, 0o600);
    assert_eq!(
        a.mtime(),
        fs::metadata(src.join("deep/page")).unwrap().mtime()
    );

    // tar into the mount, extract inside it, and extract from it to the outside.
    sh(&format!("tar -C '{s}' -cf '{mnt}/tree.tar' ."));
    sh(&format!(
        "mkdir '{mnt}/untarred' && tar -C '{mnt}/untarred' -xf '{mnt}/tree.tar'"
    ));
    sh(&format!("diff -r --no-dereference '{s}' '{mnt}/untarred'"));
    let out = fx.dir.path().join("out");
    sh(&format!(
        "mkdir '{o}' && tar -C '{mnt}/copy' -cf - . | tar -C '{o}' -xf -",
        o = out.display()
    ));
    sh(&format!(
        "diff -r --no-dereference '{s}' '{}'",
        out.display()
    ));
    // rm -r of a whole tree.
    sh(&format!("rm -r '{mnt}/untarred'"));
    assert!(!fx.p("untarred").exists());

    m.unmount().unwrap();
    fx.check_clean();
    let mut m = fx.mount("");
    sh(&format!("diff -r --no-dereference '{s}' '{mnt}/copy'"));
    sh(&format!("cmp '{mnt}/tree.tar' '{mnt}/tree.tar'"));
    m.unmount().unwrap();
    fx.check_clean();
}

#[test]
fn concurrent_writers_on_several_threads() {
    let fx = fixture(256 << 20);
    let mut m = fx.mount("threads=4");
    let threads: Vec<_> = (0..6u64)
        .map(|t| {
            let dir = fx.p(&format!("t{t}"));
            std::thread::spawn(move || {
                fs::create_dir(&dir).unwrap();
                for i in 0..20u64 {
                    let data = pattern(t * 100 + i, (i as usize + 1) * 10_007);
                    fs::write(dir.join(format!("f{i}")), &data).unwrap();
                }
                for i in 0..20u64 {
                    let data = pattern(t * 100 + i, (i as usize + 1) * 10_007);
                    assert_eq!(fs::read(dir.join(format!("f{i}"))).unwrap(), data);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    m.unmount().unwrap();
    fx.check_clean();
    let mut m = fx.mount("");
    for t in 0..6u64 {
        assert_eq!(ls(&fx.p(&format!("t{t}"))).len(), 20);
        let data = pattern(t * 100 + 19, 20 * 10_007);
        assert_eq!(fs::read(fx.p(&format!("t{t}/f19"))).unwrap(), data);
    }
    m.unmount().unwrap();
}

#[test]
fn dropping_the_guard_unmounts_even_when_busy() {
    let fx = fixture(64 << 20);
    let mut m = fx.mount("");
    fs::write(fx.p("f"), b"x").unwrap();
    let f = File::open(fx.p("f")).unwrap();
    // A busy mount refuses a strict unmount (and stays mounted)...
    let entry = blobfs_fuse::find_mount(&fx.mnt).unwrap().unwrap();
    assert_eq!(m.unmount().unwrap_err().raw_os_error(), Some(libc::EBUSY));
    assert_eq!(
        blobfs_fuse::unmount(&fx.mnt, blobfs_fuse::Unmount::Strict)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EBUSY)
    );
    assert_eq!(fs::read(fx.p("f")).unwrap(), b"x");
    // ...but the guard detaches it lazily at once; the session ends (and the filesystem
    // is closed) when the last user lets go.
    let status = m.close_status();
    let closer = std::thread::spawn(move || {
        let gone = blobfs_fuse::wait_unmounted(&entry, std::time::Duration::from_secs(5));
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(f);
        gone
    });
    drop(m);
    assert!(closer.join().unwrap(), "not detached while busy");
    assert_eq!(status.get(), Some(Ok(())));
    fx.check_clean();
}

/// The server drops privileges itself (FUSE_HANDLE_KILLPRIV_V2, which spares a GETXATTR
/// round trip per write): what Linux does on ext4 must still happen.
#[test]
fn writes_truncates_and_chown_drop_setuid_and_capabilities() {
    use std::os::unix::process::CommandExt;
    let fx = fixture(64 << 20);
    // Another user must reach the mount: allow_other, and a path it may traverse.
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut m = fx.mount("allow_other");
    let f = fx.p("prog");
    fs::write(&f, b"#!/bin/sh\n").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
    let chmod = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    let append_as = |uid: u32, p: &Path| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf x >> '{}'", p.display()))
            .uid(uid)
            .gid(uid)
            .status()
            .unwrap();
        assert!(st.success(), "append as uid {uid} failed: {st:?}");
    };

    // Root (CAP_FSETID) keeps the bits when writing; another user's write drops them.
    chmod(&f, 0o6777);
    append_as(0, &f);
    assert_eq!(mode(&f), 0o6777, "a write by root keeps set-ID bits");
    append_as(65534, &f);
    assert_eq!(
        mode(&f),
        0o0777,
        "a write by another user drops set-ID bits"
    );
    // Set-group-ID without group execute is mandatory locking, not privilege: kept.
    chmod(&f, 0o2767);
    append_as(65534, &f);
    assert_eq!(mode(&f), 0o2767);

    // chown drops set-user-ID even for root.
    chmod(&f, 0o4755);
    std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
    assert_eq!(mode(&f), 0o0755, "chown drops set-user-ID");
    // Truncate by root keeps them (CAP_FSETID).
    chmod(&f, 0o4755);
    OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(mode(&f), 0o4755);

    // File capabilities go on any write, even root's. A version-2 vfs_cap_data: magic,
    // then permitted/inheritable words for capabilities 0-31 and 32-63.
    let mut caps = Vec::new();
    for w in [0x0200_0000u32, 1, 0, 0, 0] {
        caps.extend_from_slice(&w.to_le_bytes());
    }
    chmod(&f, 0o755);
    xattr::set(&f, "security.capability", &caps).unwrap();
    assert!(xattr::get(&f, "security.capability").unwrap().is_some());
    append_as(0, &f);
    assert_eq!(xattr::get(&f, "security.capability").unwrap(), None);
    assert_eq!(fs::read(&f).unwrap(), b"#!/x");

    m.unmount().unwrap();
    fx.check_clean();
}
