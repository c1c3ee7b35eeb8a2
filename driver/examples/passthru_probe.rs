//! Probes an NVMe generic character device with the passthrough backend: geometry, then a
//! Flush, a Write, a Read, a Deallocate and a Read of zeroes on one block, on a polled and
//! on an interrupt-driven queue pair; exits 1 if anything failed.
//! `cargo run -p blobfs-driver --example passthru_probe -- /dev/ng0n1` (in the VM).
use driver::passthru::{PassthruDevice, PassthruOptions};
use driver::{run_one, Device, DmaBuf, Lba, Op};

fn check(failed: &mut bool, what: &str, ok: bool, detail: String) {
    println!("{what}: {}", if ok { "ok".to_string() } else { detail });
    *failed |= !ok;
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/dev/ng0n1".into());
    let mut failed = false;
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
