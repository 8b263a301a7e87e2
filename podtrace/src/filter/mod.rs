//! tcpdump filter expressions: compiled by libpcap itself, so syntax and
//! semantics are exactly tcpdump's, into the classic-BPF program the eBPF
//! side interprets in the kernel (see `podtrace-ebpf/src/filter.rs`).
//!
//! Compilation happens on a "dead" Ethernet handle, as `tcpdump -d` does
//! without an interface: podtrace captures Ethernet frames on every target,
//! so the program does not depend on which one. The netmask is unknown (like
//! tcpdump on Linux's "any"), so `ip broadcast` is refused by libpcap.

use std::{
    ffi::{c_char, c_int, c_uint, CStr, CString},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use podtrace_common::{FilterInsn, MAX_FILTER_INSNS};

mod patience;
pub mod translate;

pub use patience::compile_patiently;

/// A compiled filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// The expression as given (words joined with spaces, or the -F file).
    pub expression: String,
    /// The classic-BPF program, at most [`MAX_FILTER_INSNS`] long.
    pub insns: Vec<FilterInsn>,
    /// How long libpcap took (its optimizer can take seconds on huge filters).
    pub compile_time: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// libpcap's own message, as tcpdump would print it.
    #[error("invalid filter expression {expression:?}: {message}")]
    Invalid { expression: String, message: String },
    #[error("filter expression {expression:?} compiles to {len} classic-BPF instructions; at most {MAX_FILTER_INSNS} are allowed")]
    TooLong { expression: String, len: usize },
    #[error("cannot read filter file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a filter expression was given both with -F and on the command line ({words:?})")]
    FileAndWords { words: String },
    #[error("libpcap cannot open a handle to compile filters")]
    Pcap,
    #[error("{signal} while libpcap was compiling the filter; nothing was captured")]
    Interrupted { signal: &'static str },
    #[error("--duration ran out after {:.1} s of compiling the filter; nothing was captured", waited.as_secs_f64())]
    DurationElapsed { waited: Duration },
}

impl FilterError {
    /// Whether the user asked for something that cannot be (exit code 2).
    pub fn is_bad_input(&self) -> bool {
        !matches!(
            self,
            Self::Pcap | Self::Interrupted { .. } | Self::DurationElapsed { .. }
        )
    }
}

/// The expression to compile, like tcpdump: the words joined with spaces,
/// or the contents of `file` with `#` comments removed. `None` when there
/// is no filter (nothing but blanks).
pub fn expression(words: &[String], file: Option<&Path>) -> Result<Option<String>, FilterError> {
    let text = match file {
        Some(_) if !words.is_empty() => {
            return Err(FilterError::FileAndWords {
                words: words.join(" "),
            });
        }
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|source| FilterError::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            strip_comments(&raw)
        }
        None => words.join(" "),
    };
    Ok((!text.trim().is_empty()).then_some(text))
}

/// tcpdump -F: everything from `#` to the end of its line is blank.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split_once('#').map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compiles `expression` with libpcap for Ethernet frames and `snaplen`
/// (which is what a matching packet's program returns), optimizer on.
pub fn compile(expression: &str, snaplen: u32) -> Result<Filter, FilterError> {
    let invalid = |message: String| FilterError::Invalid {
        expression: expression.to_owned(),
        message,
    };
    let c_expr = CString::new(expression).map_err(|_| invalid("it contains a NUL byte".into()))?;
    let snaplen = c_int::try_from(snaplen).unwrap_or(c_int::MAX);
    let _guard = LIBPCAP.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    // SAFETY: FFI to libpcap with valid arguments; the handle and program
    // are released on every path below.
    unsafe {
        let pcap = ffi::pcap_open_dead(ffi::DLT_EN10MB, snaplen);
        if pcap.is_null() {
            return Err(FilterError::Pcap);
        }
        let mut program = ffi::BpfProgram {
            bf_len: 0,
            bf_insns: std::ptr::null_mut(),
        };
        let ret = ffi::pcap_compile(
            pcap,
            &mut program,
            c_expr.as_ptr(),
            1,
            ffi::PCAP_NETMASK_UNKNOWN,
        );
        let result = if ret != 0 {
            let message = CStr::from_ptr(ffi::pcap_geterr(pcap)).to_string_lossy();
            // Our own message already says the expression is invalid.
            let message = message.trim_start_matches("can't parse filter expression: ");
            Err(invalid(message.to_owned()))
        } else {
            let insns =
                std::slice::from_raw_parts(program.bf_insns, program.bf_len as usize).to_vec();
            ffi::pcap_freecode(&mut program);
            Ok(insns)
        };
        ffi::pcap_close(pcap);
        let insns = result?;
        if insns.is_empty() || insns.len() > MAX_FILTER_INSNS as usize {
            return Err(FilterError::TooLong {
                expression: expression.to_owned(),
                len: insns.len(),
            });
        }
        Ok(Filter {
            expression: expression.to_owned(),
            insns,
            compile_time: started.elapsed(),
        })
    }
}

impl Filter {
    /// The program as tcpdump prints it: `-d` (level 1) in libpcap's
    /// readable form, `-dd` as a C array, `-ddd` as decimal numbers.
    pub fn dump(&self, level: u8) -> String {
        let mut out = String::new();
        match level {
            0 | 1 => {
                let _guard = LIBPCAP.lock().unwrap_or_else(|e| e.into_inner());
                for (i, insn) in self.insns.iter().enumerate() {
                    // SAFETY: bpf_image only reads the instruction; it returns
                    // a static buffer (hence the lock), copied out at once.
                    let line = unsafe { CStr::from_ptr(ffi::bpf_image(insn, i as c_int)) };
                    out.push_str(&line.to_string_lossy());
                    out.push('\n');
                }
            }
            2 => {
                for i in &self.insns {
                    let _ = writeln!(
                        out,
                        "{{ {:#x}, {}, {}, 0x{:08x} }},",
                        i.code, i.jt, i.jf, i.k
                    );
                }
            }
            _ => {
                let _ = writeln!(out, "{}", self.insns.len());
                for i in &self.insns {
                    let _ = writeln!(out, "{} {} {} {}", i.code, i.jt, i.jf, i.k);
                }
            }
        }
        out
    }
}

impl Filter {
    /// libpcap's own verdict on a whole packet (what `tcpdump -r` runs):
    /// 0 rejects. The reference the kernel-side engines are tested against.
    pub fn libpcap_verdict(&self, packet: &[u8]) -> u32 {
        let len = c_uint::try_from(packet.len()).unwrap_or(c_uint::MAX);
        // SAFETY: the program came from pcap_compile (so libpcap validated
        // it) and the packet buffer holds `len` bytes.
        unsafe { ffi::bpf_filter(self.insns.as_ptr(), packet.as_ptr(), len, len) }
    }
}

/// libpcap's `bpf_image` formats into a static buffer: one caller at a time.
/// Compiling takes the same lock, which costs nothing in a one-shot CLI.
static LIBPCAP: Mutex<()> = Mutex::new(());

/// The few libpcap functions podtrace needs. `build.rs` links the library:
/// libpcap-dev's shared one (`cargo xtask setup` installs it), or a static
/// one for `cargo xtask dist`.
mod ffi {
    use super::{c_char, c_int, c_uint};
    use podtrace_common::FilterInsn;

    pub const DLT_EN10MB: c_int = 1;
    pub const PCAP_NETMASK_UNKNOWN: u32 = 0xffff_ffff;

    #[repr(C)]
    pub struct Pcap {
        _private: [u8; 0],
    }

    /// `struct bpf_program`; its instructions are `struct bpf_insn`, which
    /// [`FilterInsn`] mirrors.
    #[repr(C)]
    pub struct BpfProgram {
        pub bf_len: c_uint,
        pub bf_insns: *mut FilterInsn,
    }

    extern "C" {
        pub fn pcap_open_dead(linktype: c_int, snaplen: c_int) -> *mut Pcap;
        pub fn pcap_compile(
            p: *mut Pcap,
            fp: *mut BpfProgram,
            expression: *const c_char,
            optimize: c_int,
            netmask: u32,
        ) -> c_int;
        pub fn pcap_geterr(p: *mut Pcap) -> *mut c_char;
        pub fn pcap_freecode(fp: *mut BpfProgram);
        pub fn pcap_close(p: *mut Pcap);
        pub fn bpf_image(insn: *const FilterInsn, n: c_int) -> *mut c_char;
        pub fn bpf_filter(
            insns: *const FilterInsn,
            packet: *const u8,
            wirelen: c_uint,
            buflen: c_uint,
        ) -> c_uint;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn compiles_like_tcpdump() {
        // `tcpdump -d ip` (tcpdump 4.99 / libpcap 1.10).
        let f = compile("ip", 262_144).unwrap();
        assert_eq!(
            f.dump(1),
            "(000) ldh      [12]\n\
             (001) jeq      #0x800           jt 2\tjf 3\n\
             (002) ret      #262144\n\
             (003) ret      #0\n"
        );
        assert_eq!(
            f.dump(2),
            "{ 0x28, 0, 0, 0x0000000c },\n\
             { 0x15, 0, 1, 0x00000800 },\n\
             { 0x6, 0, 0, 0x00040000 },\n\
             { 0x6, 0, 0, 0x00000000 },\n"
        );
        assert_eq!(
            f.dump(3),
            "4\n40 0 0 12\n21 0 1 2048\n6 0 0 262144\n6 0 0 0\n"
        );
    }

    #[test]
    fn snaplen_is_what_a_match_returns() {
        let f = compile("udp", 96).unwrap();
        assert!(f.dump(1).contains("ret      #96\n"), "{}", f.dump(1));
        let f = compile("tcp port 8080 and not host 10.245.0.1", 262_144).unwrap();
        assert_eq!(f.insns.len(), 24);
        assert_eq!(f.insns.last().unwrap().code, 0x06);
    }

    #[test]
    fn invalid_expression_has_libpcap_message() {
        let err = compile("tcp prt 80", 262_144).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid filter expression \"tcp prt 80\": syntax error"
        );
        assert!(err.is_bad_input());
        let err = compile("ip broadcast", 262_144).unwrap_err();
        assert!(err.to_string().contains("netmask"), "{err}");
        let err = compile("a\0b", 262_144).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn too_long_is_refused() {
        // ~18 instructions per IPv6 host, and quick to optimize (IPv4
        // hosts of that count take libpcap's optimizer a minute).
        let hosts: Vec<String> = (1..260).map(|i| format!("ip6 host fd00::{i:x}")).collect();
        let err = compile(&hosts.join(" or "), 262_144).unwrap_err();
        assert!(
            matches!(err, FilterError::TooLong { len, .. } if len > 4096),
            "{err}"
        );
    }

    #[test]
    fn expression_from_words_or_file() {
        assert_eq!(expression(&[], None).unwrap(), None);
        assert_eq!(
            expression(&words("tcp port 80"), None).unwrap().as_deref(),
            Some("tcp port 80")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "tcp # web\n  and port 80 # only\n").unwrap();
        let text = expression(&[], Some(&path)).unwrap().unwrap();
        assert_eq!(text, "tcp \n  and port 80 ");
        assert!(compile(&text, 65535).is_ok());
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert_eq!(expression(&[], Some(&path)).unwrap(), None);
        assert!(matches!(
            expression(&words("udp"), Some(&path)),
            Err(FilterError::FileAndWords { .. })
        ));
        assert!(matches!(
            expression(&[], Some(&dir.path().join("missing"))),
            Err(FilterError::ReadFile { .. })
        ));
    }
}
