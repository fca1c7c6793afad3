//! The world process's own address space, read from /proc/self/maps.

use crate::WorldError;

/// A mapping of this process, from /proc/self/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The maps line, for messages.
    pub line: String,
}

/// Parses /proc/self/maps text.
#[must_use]
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                line: line.to_owned(),
            })
        })
        .collect()
}

/// The address of the first occurrence of `pattern` in this process's
/// readable, executable mappings, the C library's first: what an attacker
/// who owns the world looks for (a `syscall; ret` of the monitor's own
/// code). For the attacker tests only (`--test-leak-syscall-gadget`).
#[must_use]
pub fn find_code(pattern: &[u8]) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut code: Vec<Mapping> = parse(&text)
        .into_iter()
        .filter(|mapping| mapping.line.split_whitespace().nth(1) == Some("r-xp"))
        .filter(|mapping| !mapping.line.contains('['))
        .collect();
    code.sort_by_key(|mapping| !mapping.line.contains("libc"));
    code.iter().find_map(|mapping| {
        let len = usize::try_from(mapping.end - mapping.start).ok()?;
        // SAFETY: a readable mapping of this process's own file-backed
        // code (never unmapped while the process runs), read only.
        let bytes = unsafe { std::slice::from_raw_parts(mapping.start as *const u8, len) };
        let at = bytes
            .windows(pattern.len())
            .position(|window| window == pattern)?;
        Some(mapping.start + at as u64)
    })
}

/// Mappings that reach below 4 GiB.
#[must_use]
pub fn below_4g(mappings: &[Mapping]) -> Vec<Mapping> {
    mappings
        .iter()
        .filter(|mapping| mapping.start < 1 << 32)
        .cloned()
        .collect()
}

/// Checks that nothing of this process is mapped below 4 GiB, where guest
/// code could reach it (DESIGN.md section 2).
pub fn check_nothing_below_4g() -> Result<(), WorldError> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| WorldError::Host {
        what: "reading /proc/self/maps",
        source,
    })?;
    match below_4g(&parse(&text)).first() {
        None => Ok(()),
        Some(mapping) => Err(WorldError::AddressSpace(mapping.line.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_low_mappings() {
        let text = "00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n\
                    55d8f2a00000-55d8f2a21000 r--p 00000000 fe:01 123 /usr/bin/btvmm\n\
                    7ffd4f7e1000-7ffd4f802000 rw-p 00000000 00:00 0 [stack]\n";
        let mappings = parse(text);
        assert_eq!(mappings.len(), 3);
        let low = below_4g(&mappings);
        assert_eq!(low.len(), 1);
        assert!(low[0].line.contains("dbus-daemon"));
    }

    #[test]
    fn this_test_process_is_above_4g() {
        // A PIE test binary on x86-64 Linux maps nothing low; if this
        // fails, the world's own check would refuse to start too.
        let text = std::fs::read_to_string("/proc/self/maps").expect("procfs");
        assert_eq!(below_4g(&parse(&text)), vec![]);
    }
}
