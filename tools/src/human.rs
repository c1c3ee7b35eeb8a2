//! Formatting for people: sizes and uuids.

/// A byte count in binary units: `1 GiB`, `1.50 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut div = 1024u64;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        unit += 1;
        div *= 1024;
    }
    let name = UNITS.get(unit).copied().unwrap_or("B");
    if n.is_multiple_of(div) {
        format!("{} {name}", n / div)
    } else {
        format!("{:.2} {name}", n as f64 / div as f64)
    }
}

/// A uuid in the usual 8-4-4-4-12 hex form.
pub fn uuid(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(1 << 30), "1 GiB");
        assert_eq!(bytes(3 << 19), "1.50 MiB");
        assert_eq!(bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn uuids() {
        let u: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(uuid(&u), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }
}
