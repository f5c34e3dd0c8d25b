//! The memory preflight: from the checkpoint's header alone, what each
//! precision will hold, against what the process may use (`MemAvailable`,
//! the cgroup limit, `RLIMIT_AS`, `--max-memory`). A model that does not fit
//! is refused with one line before any weight is read, never by an
//! allocator abort or a silent OOM kill. `--precision auto` is resolved
//! here: weights at rest where the f32 dot kernel runs, else f32 copies
//! while they fit the budget, else at rest.

use super::arch::{all_names, Part, TensorNames};
use super::weights::{Precision, WeightSource};
use crate::kernels::f32dot::Isa;
use crate::{Error, OptionName, Result};

/// Scratch the model needs next to its weights: per-thread dequantisation
/// panels, activations of a short prompt. The lens's own blocks are the
/// caller's `run_bytes`.
const WORKING_BYTES: u64 = 16 << 20;
/// Address space each worker thread reserves beyond what it touches: a glibc
/// malloc arena (64 MiB) and its stack. Counts only against `RLIMIT_AS`.
const THREAD_RESERVE: u64 = 72 << 20;

/// What a checkpoint holds in memory at each precision, from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Every tensor as an f32 copy, plus the transient of the largest copy
    /// (a matmul weight is dequantised, then transposed).
    pub f32_bytes: u64,
    /// At rest: the small tensors (norms, biases, learned positions) in f32,
    /// one block's stored weights and the embedding/head resident at once,
    /// and working buffers. The rest of the file stays in the page cache.
    pub rest_bytes: u64,
    /// All tensors as stored: what the file maps.
    pub stored_bytes: u64,
}

/// The memory a checkpoint of `n_layers` blocks needs, from tensor shapes
/// and storage types only.
pub fn need(
    src: &dyn WeightSource,
    names: &dyn TensorNames,
    n_layers: usize,
) -> Result<MemoryNeed> {
    let (mut f32_bytes, mut small, mut stored_total) = (0u64, 0u64, 0u64);
    let (mut largest, mut global_stored) = (0u64, 0u64);
    let mut per_block = vec![0u64; n_layers];
    for (key, name) in all_names(names, n_layers) {
        let Some(shape) = src.shape(&name) else {
            continue;
        };
        let elems: u64 = shape.iter().map(|&d| d as u64).product();
        f32_bytes += 4 * elems;
        let stored = src.stored(&name)?;
        let bytes = stored
            .as_ref()
            .map_or(4 * elems, |s| s.stored_bytes() as u64);
        stored_total += bytes;
        if stored.is_none() || key.0 == Part::PositionEmbd {
            small += 4 * elems;
            continue;
        }
        largest = largest.max(4 * elems);
        match key.1 {
            Some(i) if i < n_layers => per_block[i] += bytes,
            _ => global_stored = global_stored.max(bytes),
        }
    }
    let block = per_block.iter().copied().max().unwrap_or(0);
    Ok(MemoryNeed {
        f32_bytes: f32_bytes + largest + WORKING_BYTES,
        rest_bytes: small + 2 * block + global_stored + WORKING_BYTES,
        stored_bytes: stored_total,
    })
}

/// How much memory the process may use now, and what limits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// `MemAvailable`, `cgroup memory.max` or `RLIMIT_AS`.
    pub source: &'static str,
}

impl MemoryLimit {
    /// The tightest of `MemAvailable`, the cgroup's room and the address
    /// space left under `RLIMIT_AS`.
    pub(crate) fn current() -> Self {
        let mut best = MemoryLimit {
            bytes: u64::MAX,
            source: "no limit found",
        };
        let mut consider = |bytes: Option<u64>, source: &'static str| {
            if let Some(b) = bytes.filter(|&b| b < best.bytes) {
                best = MemoryLimit { bytes: b, source };
            }
        };
        consider(
            meminfo_kib("MemAvailable:").map(|k| k * 1024),
            "`MemAvailable`",
        );
        consider(cgroup_room(), "the cgroup's `memory.max`");
        consider(address_space_room(), "`RLIMIT_AS`");
        best
    }
}

/// The precision a load will use and the memory it was checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Never `Auto`.
    pub precision: Precision,
    pub need: MemoryNeed,
    pub limit: MemoryLimit,
    /// The file does not fit in memory beside the run: blocks are released
    /// after use so the page cache can drop them (streaming).
    pub streaming: bool,
}

/// What a load may use: `--max-memory` for the model's own memory, and what
/// the run needs beside it (the lens's logit blocks), checked with the
/// model against the machine and process limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryRequest {
    /// `--max-memory`: the most the model may hold.
    pub max_memory: Option<u64>,
    /// Bytes the run allocates beside the model.
    pub run_bytes: u64,
}

/// Resolve `precision` against the memory available and check it fits.
/// `Auto` works at rest on a CPU with the f32 dot kernel (AVX2 or AVX-512);
/// elsewhere it keeps f32 copies while they fit the budget (`max_memory`,
/// else half of what is available), else works at rest.
/// `label` names the model in the refusal.
pub fn plan(
    need: MemoryNeed,
    label: &str,
    precision: Precision,
    req: MemoryRequest,
) -> Result<MemoryPlan> {
    let limit = MemoryLimit::current();
    let room = limit.bytes.saturating_sub(req.run_bytes);
    let budget = req.max_memory.unwrap_or(limit.bytes / 2).min(room);
    let precision = match precision {
        // Same numbers either way (one panel routine, one summation order);
        // with the f32 dot kernel at rest also loads about ten times faster
        // and runs as fast, so copies only pay without it.
        Precision::Auto if Isa::detect().is_some() => Precision::Rest,
        Precision::Auto if need.f32_bytes <= budget => Precision::F32,
        Precision::Auto => Precision::Rest,
        p => p,
    };
    let needed = match precision {
        Precision::Rest | Precision::Quant => need.rest_bytes,
        Precision::F64 => 2 * need.f32_bytes,
        _ => need.f32_bytes,
    };
    let refuse = |needed: u64, available: u64, limit: &'static str| Error::OutOfMemory {
        model: label.to_string(),
        precision: precision.label(),
        needed: human_bytes(needed),
        available: human_bytes(available),
        limit,
    };
    if let Some(max) = req.max_memory.filter(|&m| needed > m) {
        return Err(refuse(needed, max, "the memory limit"));
    }
    if needed + req.run_bytes > limit.bytes {
        return Err(refuse(needed + req.run_bytes, limit.bytes, limit.source));
    }
    // Streamed when the file's pages would not fit beside the rest: in the
    // memory available, or in the memory limit if that is smaller.
    let hold = req.max_memory.map_or(room, |m| m.min(room));
    let streaming = precision.at_rest() && need.stored_bytes + needed > hold;
    Ok(MemoryPlan {
        precision,
        need,
        limit,
        streaming,
    })
}

/// [`parse_bytes`] as a clap value parser for `--max-memory`.
pub(crate) fn parse_max_memory(s: &str) -> std::result::Result<u64, String> {
    parse_bytes(s).map_err(|e| e.to_string())
}

/// Parse a size such as `6G`, `512M`, `64MiB` or `1000000` (bytes).
fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => 0,
    };
    match num.parse::<f64>() {
        Ok(v) if scale > 0 && v > 0.0 && v.is_finite() => Ok((v * scale as f64) as u64),
        _ => Err(Error::option(
            OptionName::MemoryLimit,
            format!("the memory limit must be a size such as `6G` or `512M`, got `{s}`"),
        )),
    }
}

/// Bytes for people: `5.5 GiB`, `64.0 MiB`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// This process's memory for `--timings`: peak resident set (`VmHWM`), and
/// the resident set now split into anonymous and file-backed (mapped
/// weights) pages. `None` off Linux.
pub(crate) fn resident_report() -> Option<String> {
    let kib = |key| proc_field("/proc/self/status", key).map(|k| human_bytes(k * 1024));
    Some(format!(
        "peak RSS {}, now anonymous {}, file-backed {}",
        kib("VmHWM:")?,
        kib("RssAnon:")?,
        kib("RssFile:")?
    ))
}

/// A `/proc/meminfo` field in KiB.
fn meminfo_kib(key: &str) -> Option<u64> {
    proc_field("/proc/meminfo", key)
}

/// A `Key:   123 kB` field of a `/proc` status-like file, in KiB.
fn proc_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Room left under the cgroup's memory limit (v2, else v1).
fn cgroup_room() -> Option<u64> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroup.lines() {
        // v2: `0::/path`; v1: `N:memory:/path`.
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (max, current) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read(&format!("{dir}/memory.max")),
                read(&format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read(&format!("{dir}/memory.limit_in_bytes")),
                read(&format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        if let (Some(max), Some(current)) = (max, current) {
            return Some(max.saturating_sub(current));
        }
    }
    None
}

/// Address space left under `RLIMIT_AS`: the limit minus what is mapped now
/// (the checkpoint's files included, as they are mapped at open).
fn address_space_room() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let mapped = proc_field("/proc/self/status", "VmSize:")? * 1024;
    let reserve = rayon::current_num_threads() as u64 * THREAD_RESERVE;
    Some(lim.rlim_cur.saturating_sub(mapped + reserve))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("6G").unwrap(), 6 << 30);
        assert_eq!(parse_bytes("64M").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5K").unwrap(), 1536);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert!(parse_bytes("six").is_err());
        assert!(parse_bytes("0").is_err());
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(12), "12 B");
    }
}
