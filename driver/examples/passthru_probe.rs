//! Probes an NVMe generic character device with the passthrough backend: geometry, then a
//! Flush, a Write, a Read, a Deallocate and a Read of zeroes on one block, on a polled and
//! on an interrupt-driven queue pair; exits 1 if anything failed.
//! `cargo run -p blobfs-driver --example passthru_probe -- /dev/ng0n1` (in the VM).
//!
//! `passthru_probe /dev/ngXnY --reset [--no-poll]` resets the controller through the kernel
//! while 32 commands are kept in flight (see `common::reset_test`).
mod common;

use common::{check, Trigger};
use driver::passthru::{PassthruDevice, PassthruOptions};
use driver::{run_one, Device, DmaBuf, Error, Lba, Op};
use std::sync::Arc;

/// Resets the controller through the kernel (`reset_controller` in sysfs) while I/O runs
/// through passthrough: the kernel cancels the commands the controller had and fails them
/// (it does not retry passthrough commands); new ones work once it has reset.
fn reset_test(path: &str, no_poll: bool, failed: &mut bool) {
    let opts = PassthruOptions {
        read_only: false,
        no_poll,
    };
    let dev = PassthruDevice::open(path, &opts).expect("open");
    let name = std::path::Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("ng"))
        .expect("a /dev/ngXnY path");
    let ctrl = format!("/sys/block/nvme{name}/device/reset_controller");
    let trigger = Trigger::FromMain(Box::new(move || {
        std::fs::write(&ctrl, "1").map_err(|e| format!("{ctrl}: {e}"))
    }));
    common::reset_test(
        Arc::new(dev),
        &format!("controller reset through the kernel (no_poll={no_poll})"),
        trigger,
        is_reset_error,
        // The kernel often lets what the controller holds finish before it resets it
        // (about one reset in three here failed no command): failures are checked when
        // they come, not required.
        false,
        failed,
    );
}

/// Commands the kernel cancels come back as the backend's reset error.
fn is_reset_error(e: &Error) -> bool {
    matches!(e, Error::ControllerReset { .. })
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/ng0n1".into());
    let mut failed = false;
    if std::env::args().nth(2).as_deref() == Some("--reset") {
        reset_test(
            &path,
            std::env::args().nth(3).as_deref() == Some("--no-poll"),
            &mut failed,
        );
        std::process::exit(i32::from(failed));
    }
    for no_poll in [false, true] {
        let opts = PassthruOptions {
            read_only: false,
            no_poll,
        };
        let dev = match PassthruDevice::open(&path, &opts) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("open {path}: {e}");
                std::process::exit(1);
            }
        };
        let g = dev.geometry();
        println!("{path}: nsid {} {g:?} no_poll={no_poll}", dev.nsid());
        let mut qp = match dev.open_qpair(8) {
            Ok(q) => q,
            Err(e) => {
                eprintln!("queue pair: {e}");
                std::process::exit(1);
            }
        };
        let lba = g.lba_size as usize;
        let r = run_one(qp.as_mut(), Op::Flush);
        check(&mut failed, "flush", r.is_ok(), format!("{r:?}"));
        let buf = DmaBuf::from_slice(&vec![0x5a; lba]);
        let r = run_one(qp.as_mut(), Op::Write { lba: Lba(3), buf });
        check(&mut failed, "write", r.is_ok(), format!("{r:?}"));
        let r = run_one(
            qp.as_mut(),
            Op::Read {
                lba: Lba(3),
                buf: DmaBuf::zeroed(lba),
            },
        );
        let ok = matches!(&r, Ok(Some(b)) if b.as_slice().iter().all(|&x| x == 0x5a));
        check(&mut failed, "read back", ok, format!("{r:?}"));
        let r = run_one(
            qp.as_mut(),
            Op::Deallocate {
                lba: Lba(3),
                count: 1,
            },
        );
        check(&mut failed, "deallocate", r.is_ok(), format!("{r:?}"));
        let r = run_one(
            qp.as_mut(),
            Op::Read {
                lba: Lba(3),
                buf: DmaBuf::zeroed(lba),
            },
        );
        let ok = matches!(&r, Ok(Some(b)) if b.as_slice().iter().all(|&x| x == 0));
        check(
            &mut failed,
            "reads zeroes after deallocate",
            ok,
            format!("{r:?}"),
        );
    }
    if failed {
        std::process::exit(1);
    }
}
