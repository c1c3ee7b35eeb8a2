//! BlobFS behaviour through the library API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{Error, FileSystem, FsOptions, Kind, RenameFlags, SetAttr, ROOT_INO};
use driver::mem::{MemDevice, MemOptions};
use driver::Device;
use std::sync::Arc;

fn mem(cap: u64) -> MemDevice {
    MemDevice::new(MemOptions {
        capacity: cap,
        lba_size: 512,
        ..Default::default()
    })
    .unwrap()
}

fn opts() -> FsOptions {
    FsOptions {
        sync_interval: None,
        ..Default::default()
    }
}

fn new_fs(dev: &MemDevice) -> FileSystem {
    let d: Arc<dyn Device> = Arc::new(dev.clone());
    FileSystem::format(
        Arc::clone(&d),
        &blobstore::FormatOptions {
            cluster_size: 64 * 1024,
            ..Default::default()
        },
    )
    .unwrap();
    FileSystem::open(d, opts()).unwrap()
}

fn reopen(dev: &MemDevice) -> FileSystem {
    FileSystem::open(Arc::new(dev.clone()), opts()).unwrap()
}

fn clean(fs: &FileSystem) {
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
}

fn names(fs: &FileSystem, dir: u64) -> Vec<String> {
    fs.readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect()
}

#[test]
fn files_and_directories_survive_reopen() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    let d = fs.mkdir(ROOT_INO, b"dir", 0o755, 1, 2).unwrap();
    assert_eq!(d.kind, Kind::Dir);
    assert_eq!(d.nlink, 2);
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    let f = fs.create(d.ino, b"file", 0o644, 1, 2).unwrap();
    fs.open_file(f.ino).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(fs.write(f.ino, 0, &data).unwrap(), data.len());
    fs.write(f.ino, 1000, b"hello").unwrap();
    assert_eq!(
        fs.read(f.ino, 998, 9).unwrap(),
        [data[998], data[999], b'h', b'e', b'l', b'l', b'o', data[1005], data[1006]]
    );
    fs.fsync(f.ino).unwrap();
    fs.release_file(f.ino).unwrap();
    let s = fs.symlink(ROOT_INO, b"link", b"dir/file", 0, 0).unwrap();
    assert_eq!(s.kind, Kind::Symlink);
    fs.close().unwrap();

    let fs = reopen(&dev);
    clean(&fs);
    assert_eq!(names(&fs, ROOT_INO), vec!["dir", "link"]);
    let f2 = fs.lookup(d.ino, b"file").unwrap();
    assert_eq!(f2.size, data.len() as u64);
    assert_eq!((f2.uid, f2.gid, f2.perm), (1, 2, 0o644));
    let got = fs.read(f2.ino, 0, 400_000).unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(&got[1000..1005], b"hello");
    assert_eq!(&got[..1000], &data[..1000]);
    assert_eq!(&got[1005..], &data[1005..]);
    assert_eq!(fs.readlink(s.ino).unwrap(), b"dir/file");
    assert_eq!(fs.lookup(d.ino, b"..").unwrap().ino, ROOT_INO);
    assert!(matches!(fs.lookup(ROOT_INO, b"nope"), Err(Error::NotFound)));
}

#[test]
fn errors_map_to_errno() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let d = fs.mkdir(ROOT_INO, b"d", 0o755, 0, 0).unwrap();
    let f = fs.create(d.ino, b"f", 0o644, 0, 0).unwrap();
    assert_eq!(
        fs.create(d.ino, b"f", 0o644, 0, 0).unwrap_err().errno(),
        libc::EEXIST
    );
    assert_eq!(
        fs.rmdir(ROOT_INO, b"d").unwrap_err().errno(),
        libc::ENOTEMPTY
    );
    assert_eq!(fs.unlink(ROOT_INO, b"d").unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.rmdir(d.ino, b"f").unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(
        fs.create(f.ino, b"x", 0o644, 0, 0).unwrap_err().errno(),
        libc::ENOTDIR
    );
    assert_eq!(
        fs.lookup(ROOT_INO, &[b'a'; 256]).unwrap_err().errno(),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        fs.create(ROOT_INO, b"a/b", 0o644, 0, 0)
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        fs.link(d.ino, ROOT_INO, b"dl").unwrap_err().errno(),
        libc::EPERM
    );
    assert_eq!(
        fs.getxattr(f.ino, b"user.x").unwrap_err().errno(),
        libc::ENODATA
    );
    assert_eq!(
        fs.rename(ROOT_INO, b"d", d.ino, b"inside", RenameFlags::default())
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    clean(&fs);
}

#[test]
fn rename_replace_exchange_and_links() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let a = fs.mkdir(ROOT_INO, b"a", 0o755, 0, 0).unwrap();
    let b = fs.mkdir(ROOT_INO, b"b", 0o755, 0, 0).unwrap();
    let f1 = fs.create(a.ino, b"one", 0o644, 0, 0).unwrap();
    let f2 = fs.create(b.ino, b"two", 0o644, 0, 0).unwrap();
    fs.write(f1.ino, 0, b"first").unwrap();
    fs.write(f2.ino, 0, b"second").unwrap();
    // Replace across directories: two's inode goes away.
    fs.rename(a.ino, b"one", b.ino, b"two", RenameFlags::default())
        .unwrap();
    assert!(names(&fs, a.ino).is_empty());
    assert_eq!(fs.lookup(b.ino, b"two").unwrap().ino, f1.ino);
    assert!(matches!(fs.getattr(f2.ino), Err(Error::NotFound)));
    // Hard links.
    let l = fs.link(f1.ino, a.ino, b"alias").unwrap();
    assert_eq!(l.nlink, 2);
    fs.unlink(b.ino, b"two").unwrap();
    assert_eq!(fs.getattr(f1.ino).unwrap().nlink, 1);
    assert_eq!(fs.read(f1.ino, 0, 100).unwrap(), b"first");
    // Directory moves keep link counts right.
    let sub = fs.mkdir(a.ino, b"sub", 0o755, 0, 0).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 3);
    fs.rename(a.ino, b"sub", b.ino, b"sub2", RenameFlags::default())
        .unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, b.ino);
    // Exchange a file and a directory across directories.
    fs.rename(
        a.ino,
        b"alias",
        b.ino,
        b"sub2",
        RenameFlags {
            exchange: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.lookup(a.ino, b"alias").unwrap().ino, sub.ino);
    assert_eq!(fs.lookup(b.ino, b"sub2").unwrap().ino, f1.ino);
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 2);
    assert_eq!(
        fs.rename(
            a.ino,
            b"alias",
            b.ino,
            b"sub2",
            RenameFlags {
                noreplace: true,
                ..Default::default()
            }
        )
        .unwrap_err()
        .errno(),
        libc::EEXIST
    );
    // Replacing an empty directory with a directory.
    let e = fs.mkdir(b.ino, b"empty", 0o755, 0, 0).unwrap();
    fs.rename(a.ino, b"alias", b.ino, b"empty", RenameFlags::default())
        .unwrap();
    assert!(matches!(fs.getattr(e.ino), Err(Error::NotFound)));
    assert_eq!(fs.getattr(b.ino).unwrap().nlink, 3);
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 2);
    clean(&fs);
    fs.sync_all().unwrap();
    drop(fs);
    let fs = reopen(&dev);
    clean(&fs);
    assert_eq!(fs.lookup(b.ino, b"empty").unwrap().ino, sub.ino);
}

#[test]
fn unlink_open_file_frees_space_on_last_close() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"big", 0o644, 0, 0).unwrap();
    fs.open_file(f.ino).unwrap();
    fs.write(f.ino, 0, &vec![7u8; 1 << 20]).unwrap();
    fs.fsync(f.ino).unwrap();
    let free_before = fs.statfs().bfree;
    fs.unlink(ROOT_INO, b"big").unwrap();
    assert!(matches!(fs.lookup(ROOT_INO, b"big"), Err(Error::NotFound)));
    // Still readable and writable through the open handle.
    assert_eq!(fs.read(f.ino, 0, 4).unwrap(), vec![7u8; 4]);
    fs.write(f.ino, 0, b"x").unwrap();
    fs.sync_all().unwrap();
    assert_eq!(fs.statfs().bfree, free_before);
    clean(&fs);
    fs.release_file(f.ino).unwrap();
    fs.sync_all().unwrap();
    assert!(fs.statfs().bfree > free_before + 200);
    clean(&fs);
}

#[test]
fn orphan_of_a_crash_is_deleted_at_mount() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"tmp", 0o644, 0, 0).unwrap();
    fs.open_file(f.ino).unwrap();
    fs.write(f.ino, 0, &vec![1u8; 300_000]).unwrap();
    fs.unlink(ROOT_INO, b"tmp").unwrap();
    fs.sync_all().unwrap();
    assert_eq!(fs.check().unwrap().orphans, 1);
    // Crash while open.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let img = dev.power_cut(driver::mem::CutPolicy::DropAll, &mut rng);
    drop(fs);
    let fs = reopen(&img);
    let r = fs.check().unwrap();
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.orphans, 0);
    assert!(matches!(fs.getattr(f.ino), Err(Error::NotFound)));
}

#[test]
fn truncate_sparse_and_no_stale_bytes() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    fs.write(f.ino, 0, &vec![0xAA; 200_000]).unwrap();
    fs.fsync(f.ino).unwrap();
    // Shrink into the middle of a page, then grow again: the tail reads zeroes.
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(150_000),
            ..Default::default()
        },
    )
    .unwrap();
    let got = fs.read(f.ino, 0, 200_000).unwrap();
    assert_eq!(got.len(), 150_000);
    assert!(got[..5000].iter().all(|&b| b == 0xAA));
    assert!(
        got[5000..].iter().all(|&b| b == 0),
        "stale bytes after truncate+extend"
    );
    // Write far beyond EOF: a hole.
    fs.write(f.ino, 3 << 20, b"end").unwrap();
    let a = fs.getattr(f.ino).unwrap();
    assert_eq!(a.size, (3 << 20) + 3);
    let hole = fs.read(f.ino, 1 << 20, 65536).unwrap();
    assert!(hole.iter().all(|&b| b == 0));
    fs.fsync(f.ino).unwrap();
    drop(fs);
    let fs = reopen(&dev);
    let got = fs.read(f.ino, 0, 150_000).unwrap();
    assert!(got[..5000].iter().all(|&b| b == 0xAA));
    assert!(got[5000..].iter().all(|&b| b == 0));
    assert_eq!(fs.read(f.ino, 3 << 20, 10).unwrap(), b"end");
    // Sparse: far less allocated than the size.
    assert!(fs.getattr(f.ino).unwrap().blocks * 512 < 1 << 20);
    clean(&fs);
}

#[test]
fn xattrs_statfs_setattr_and_read_only() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"f", 0o600, 5, 6).unwrap();
    fs.setxattr(f.ino, b"user.color", b"blue", false, false)
        .unwrap();
    assert_eq!(
        fs.setxattr(f.ino, b"user.color", b"red", true, false)
            .unwrap_err()
            .errno(),
        libc::EEXIST
    );
    assert_eq!(
        fs.setxattr(f.ino, b"user.none", b"x", false, true)
            .unwrap_err()
            .errno(),
        libc::ENODATA
    );
    assert_eq!(fs.getxattr(f.ino, b"user.color").unwrap(), b"blue");
    assert_eq!(fs.listxattr(f.ino).unwrap(), vec![b"user.color".to_vec()]);
    fs.removexattr(f.ino, b"user.color").unwrap();
    assert_eq!(
        fs.removexattr(f.ino, b"user.color").unwrap_err().errno(),
        libc::ENODATA
    );
    let a = fs
        .setattr(
            f.ino,
            SetAttr {
                mode: Some(0o640),
                uid: Some(9),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((a.perm, a.uid, a.gid), (0o640, 9, 6));
    let s = fs.statfs();
    assert!(s.blocks > 0 && s.bfree <= s.blocks && s.bavail <= s.bfree);
    fs.close().unwrap();
    let ro = FileSystem::open(
        Arc::new(dev.clone()),
        FsOptions {
            read_only: true,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(ro.getattr(f.ino).unwrap().perm, 0o640);
    assert_eq!(
        ro.create(ROOT_INO, b"g", 0o644, 0, 0).unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(ro.write(f.ino, 0, b"x").unwrap_err().errno(), libc::EROFS);
    assert_eq!(ro.unlink(ROOT_INO, b"f").unwrap_err().errno(), libc::EROFS);
}

#[test]
fn enospc_then_work_after_delete() {
    let dev = mem(8 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"fill", 0o644, 0, 0).unwrap();
    let chunk = vec![3u8; 256 * 1024];
    let mut off = 0u64;
    let err = loop {
        match fs.write(f.ino, off, &chunk).and_then(|_| fs.fsync(f.ino)) {
            Ok(()) => off += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(off < 16 << 20);
    };
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    fs.unlink(ROOT_INO, b"fill").unwrap();
    fs.sync_all().unwrap();
    let g = fs.create(ROOT_INO, b"again", 0o644, 0, 0).unwrap();
    fs.write(g.ino, 0, &chunk).unwrap();
    fs.fsync(g.ino).unwrap();
    assert_eq!(fs.read(g.ino, 0, 10).unwrap(), vec![3u8; 10]);
    clean(&fs);
}

#[test]
fn not_a_blobfs() {
    let dev = mem(16 << 20);
    assert_eq!(
        FileSystem::open(Arc::new(dev.clone()), opts())
            .unwrap_err()
            .errno(),
        libc::EUCLEAN
    );
    blobstore::Blobstore::format(Arc::new(dev.clone()), &Default::default()).unwrap();
    assert!(matches!(
        FileSystem::open(Arc::new(dev.clone()), opts()),
        Err(Error::NotBlobfs(_))
    ));
}

#[test]
fn concurrent_writers_and_fsyncs() {
    let dev = mem(128 << 20);
    let fs = new_fs(&dev);
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let fs = fs.clone();
            s.spawn(move || {
                let name = format!("t{t}");
                let f = fs.create(ROOT_INO, name.as_bytes(), 0o644, 0, 0).unwrap();
                fs.open_file(f.ino).unwrap();
                for i in 0..50u64 {
                    fs.write(f.ino, i * 10_000, &vec![t; 10_000]).unwrap();
                    if i % 10 == 9 {
                        fs.fsync(f.ino).unwrap();
                    }
                }
                fs.release_file(f.ino).unwrap();
            });
        }
    });
    fs.sync_all().unwrap();
    drop(fs);
    let fs = reopen(&dev);
    clean(&fs);
    for t in 0..8u8 {
        let a = fs.lookup(ROOT_INO, format!("t{t}").as_bytes()).unwrap();
        assert_eq!(a.size, 500_000);
        assert!(fs.read(a.ino, 0, 500_000).unwrap().iter().all(|&b| b == t));
    }
}

#[test]
fn large_directory() {
    let dev = mem(256 << 20);
    let fs = new_fs(&dev);
    let d = fs.mkdir(ROOT_INO, b"many", 0o755, 0, 0).unwrap();
    for i in 0..20_000 {
        fs.create(d.ino, format!("file-{i:06}").as_bytes(), 0o644, 0, 0)
            .unwrap();
    }
    fs.sync_all().unwrap();
    assert_eq!(fs.readdir(d.ino).unwrap().len(), 20_000);
    drop(fs);
    let fs = reopen(&dev);
    let list = fs.readdir(d.ino).unwrap();
    assert_eq!(list.len(), 20_000);
    assert_eq!(list[123].name, b"file-000123");
    assert_eq!(fs.lookup(d.ino, b"file-019999").unwrap().kind, Kind::File);
    clean(&fs);
}

#[test]
fn regrow_after_committed_truncate_shows_zeroes_even_after_a_crash() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let f = fs.create(ROOT_INO, b"f", 0o644, 0, 0).unwrap();
    fs.write(f.ino, 0, &vec![0xAA; 200_000]).unwrap();
    fs.fsync(f.ino).unwrap();
    // The shrink commits; the bytes past the new end stay on the device (not zeroed before
    // the truncate is durable).
    fs.setattr(
        f.ino,
        SetAttr {
            size: Some(5000),
            ..Default::default()
        },
    )
    .unwrap();
    fs.sync_all().unwrap();
    // Grow with a write far out, then crash right after its fsync.
    fs.write(f.ino, 100_000, b"tail").unwrap();
    fs.fsync(f.ino).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(9);
    let img = dev.power_cut(driver::mem::CutPolicy::DropAll, &mut rng);
    drop(fs);
    let fs = reopen(&img);
    clean(&fs);
    let got = fs.read(f.ino, 0, 200_000).unwrap();
    assert_eq!(got.len(), 100_004);
    assert!(got[..5000].iter().all(|&b| b == 0xAA));
    assert!(
        got[5000..100_000].iter().all(|&b| b == 0),
        "old bytes past a committed truncate came back"
    );
    assert_eq!(&got[100_000..], b"tail");
}

#[test]
fn space_freed_by_an_uncommitted_delete_is_usable_at_once() {
    let dev = mem(64 << 20);
    let fs = new_fs(&dev);
    let a = fs.create(ROOT_INO, b"a", 0o644, 0, 0).unwrap();
    fs.write(a.ino, 0, &vec![1u8; 40 << 20]).unwrap();
    fs.flush(a.ino).unwrap();
    fs.unlink(ROOT_INO, b"a").unwrap();
    // No sync in between: the delete's clusters wait for a commit, which the write forces.
    let b = fs.create(ROOT_INO, b"b", 0o644, 0, 0).unwrap();
    fs.write(b.ino, 0, &vec![2u8; 40 << 20]).unwrap();
    fs.fsync(b.ino).unwrap();
    assert_eq!(fs.read(b.ino, (40 << 20) - 3, 10).unwrap(), vec![2u8; 3]);
    clean(&fs);
}

#[test]
fn concurrent_reads_never_cache_stale_pages() {
    let dev = mem(64 << 20);
    let d: Arc<dyn Device> = Arc::new(dev.clone());
    FileSystem::format(Arc::clone(&d), &Default::default()).unwrap();
    let fs = FileSystem::open(
        d,
        FsOptions {
            sync_interval: None,
            // Write back after every few pages, so device reads race with write-backs.
            file_dirty_limit: 3 * 4096,
            cache_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let f = fs.create(ROOT_INO, b"hot", 0o644, 0, 0).unwrap().ino;
    let pages = 64u64;
    fs.write(f, 0, &vec![0u8; (pages * 4096) as usize]).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for r in 0..3 {
            let fs = fs.clone();
            let done = &done;
            s.spawn(move || {
                let mut off = r * 4096 * 7;
                while !done.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = fs.read(f, off % (pages * 4096), 3 * 4096 + 100).unwrap();
                    off += 4096 * 5;
                }
            });
        }
        let mut writers = Vec::new();
        for w in 0..2u64 {
            let fs = fs.clone();
            writers.push(s.spawn(move || {
                for round in 1..=40u64 {
                    for p in (w..pages).step_by(2) {
                        let v = (round * 2 + w) as u8;
                        fs.write(f, p * 4096, &[v; 4096]).unwrap();
                    }
                }
            }));
        }
        for h in writers {
            h.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    // Every page holds its last write, whatever the readers cached meanwhile.
    let all = fs.read(f, 0, (pages * 4096) as usize).unwrap();
    for p in 0..pages {
        let want = (40 * 2 + p % 2) as u8;
        let page = &all[(p * 4096) as usize..((p + 1) * 4096) as usize];
        assert!(
            page.iter().all(|&b| b == want),
            "page {p} holds {} not {want}",
            page[0]
        );
    }
    fs.sync_all().unwrap();
    let again = fs.read(f, 0, (pages * 4096) as usize).unwrap();
    assert!(again == all);
}

/// An fsync after appending into an allocated cluster costs one device flush (the inode
/// record vouches for the new bytes with a checked group); an overwrite of bytes a checked
/// record may still vouch for confirms first; and everything reads back after a reopen.
#[test]
fn append_fsync_takes_one_flush() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    assert!(fs.store().supports_data_checks());
    let f = fs.create(ROOT_INO, b"wal", 0o644, 0, 0).unwrap().ino;
    // The first append allocates the cluster (one flush: a checked mapping).
    fs.write(f, 0, &[1u8; 100]).unwrap();
    fs.fsync(f).unwrap();
    let rounds = 100u64;
    let before = dev.stats().flushes;
    let mut expect = vec![1u8; 100];
    for i in 0..rounds {
        let rec = vec![(i % 251) as u8; 100];
        fs.write(f, expect.len() as u64, &rec).unwrap();
        expect.extend_from_slice(&rec);
        fs.fsync(f).unwrap();
    }
    let flushes = dev.stats().flushes - before;
    // The first fsync's checked group vouches for the whole new cluster, so the first
    // append into it confirms once (one extra flush); every round after takes one.
    assert_eq!(
        flushes,
        rounds + 1,
        "append+fsync rounds should take one flush each"
    );
    // Overwriting the bytes the last fsync vouched for first makes a later group durable
    // (one extra commit), then the overwrite's own fsync.
    let before = dev.stats().flushes;
    let at = expect.len() as u64 - 50;
    fs.write(f, at, &[0xee; 10]).unwrap();
    expect[at as usize..at as usize + 10].fill(0xee);
    assert!(
        dev.stats().flushes > before,
        "the overwrite did not confirm first"
    );
    fs.fsync(f).unwrap();
    drop(fs);
    let fs = reopen(&dev);
    assert_eq!(fs.read(f, 0, 1 << 20).unwrap(), expect);
    clean(&fs);
}

/// A new file's create + write + fsync takes one device flush: the cluster the write
/// allocates is mapped in the same checked group as the inode record, which vouches for
/// the whole cluster (data and zeroes). The next write into that cluster confirms first.
#[test]
fn create_write_fsync_takes_one_flush() {
    let dev = mem(16 << 20);
    let fs = new_fs(&dev);
    let files = 20u64;
    let before = dev.stats().flushes;
    let mut inos = Vec::new();
    for i in 0..files {
        let f = fs
            .create(ROOT_INO, format!("f{i}").as_bytes(), 0o644, 0, 0)
            .unwrap()
            .ino;
        fs.write(f, 0, &vec![i as u8 + 1; 4096 + i as usize * 100])
            .unwrap();
        fs.fsync(f).unwrap();
        inos.push(f);
    }
    let flushes = dev.stats().flushes - before;
    assert_eq!(
        flushes, files,
        "create+write+fsync should take one flush each"
    );
    // Appending into the last file's new cluster must first make a later group durable
    // (its group is the log's last); the first file's group has later ones: no confirm.
    let last = *inos.last().unwrap();
    let before = dev.stats().flushes;
    fs.write(inos[0], 4096, b"more").unwrap();
    assert_eq!(dev.stats().flushes, before);
    fs.write(last, 8192, b"tail").unwrap();
    assert!(
        dev.stats().flushes > before,
        "a write into a cluster a checked group vouches for did not confirm first"
    );
    fs.fsync(inos[0]).unwrap();
    fs.fsync(last).unwrap();
    drop(fs);
    let fs = reopen(&dev);
    for (i, &f) in inos.iter().enumerate() {
        let mut want = vec![i as u8 + 1; 4096 + i * 100];
        if i == 0 {
            want.extend_from_slice(b"more");
        }
        if i + 1 == inos.len() {
            want.resize(8192, 0);
            want.extend_from_slice(b"tail");
        }
        assert_eq!(fs.read(f, 0, 1 << 20).unwrap(), want, "file {i}");
    }
    clean(&fs);
}
