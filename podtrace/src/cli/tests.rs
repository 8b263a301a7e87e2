use super::{pods::table, *};

#[test]
fn immediate_for_text_on_a_terminal_or_when_asked() {
    let file = Output::File("x.pcap".into());
    assert!(immediate_mode(false, &Output::Text, true));
    assert!(!immediate_mode(false, &Output::Text, false));
    assert!(!immediate_mode(false, &file, true));
    assert!(!immediate_mode(false, &Output::Stdout, true));
    assert!(immediate_mode(true, &file, false));
    assert!(capture(&["-i", "x", "--immediate-mode"]).unwrap().immediate);
    assert!(!capture(&["-i", "x"]).unwrap().immediate);
}

fn capture(args: &[&str]) -> Result<CaptureArgs, clap::Error> {
    let cli = Cli::try_parse_from(["podtrace", "capture"].iter().chain(args))?;
    match cli.command {
        Command::Capture(c) => Ok(*c),
        Command::Pods(_) | Command::Agent(_) => unreachable!(),
    }
}

#[test]
fn agent_takes_the_runtime_endpoint() {
    let cli = Cli::try_parse_from(["podtrace", "agent", "--runtime-endpoint", "/x.sock"]).unwrap();
    match cli.command {
        Command::Agent(a) => assert_eq!(a.runtime.runtime_endpoint.as_deref(), Some("/x.sock")),
        _ => panic!("not the agent"),
    }
}

#[test]
fn tcpdump_style_options() {
    let c = capture(&[
        "-i",
        "veth1",
        "-w",
        "x.pcap",
        "-s",
        "96",
        "-c",
        "10",
        "--duration",
        "1.5",
    ])
    .unwrap();
    assert_eq!(c.iface.as_deref(), Some("veth1"));
    assert_eq!(c.write.as_deref(), Some(std::path::Path::new("x.pcap")));
    assert_eq!(c.snaplen, 96);
    assert_eq!(c.count, Some(10));
    assert_eq!(c.duration, Some(Duration::from_millis(1500)));
    assert_eq!(c.tc_mode, TcMode::Auto);
}

#[test]
fn pod_then_filter_words() {
    let c = capture(&["web", "-n", "prod", "tcp", "port", "80"]).unwrap();
    assert_eq!(c.namespace.as_deref(), Some("prod"));
    assert_eq!(c.words, ["web", "tcp", "port", "80"]);
    // Options may follow the pod and the filter, as with tcpdump.
    let c = capture(&[
        "-w",
        "x",
        "web",
        "-n",
        "prod",
        "--runtime-endpoint",
        "unix:///s",
    ])
    .unwrap();
    assert_eq!(c.words, ["web"]);
    assert_eq!(c.runtime.runtime_endpoint.as_deref(), Some("unix:///s"));
}

#[test]
fn defaults_and_bad_values() {
    let c = capture(&["--pid", "1"]).unwrap();
    assert_eq!(c.snaplen, DEFAULT_SNAPLEN);
    assert!(capture(&["--pid", "x"]).is_err());
    assert!(capture(&["-c", "0", "web"]).is_err());
    assert!(capture(&["--duration", "-1", "web"]).is_err());
    assert!(capture(&["-i", "a", "--pid", "1"]).is_err());
}

#[test]
fn numbers_that_would_overflow_a_duration_or_a_size_are_refused() {
    // Each of these once panicked ("cannot convert float seconds to
    // Duration") or overflowed when the deadline, period or size was computed.
    for args in [
        ["--duration", "1e300"],
        ["--duration", "inf"],
        ["--duration", "NaN"],
        ["--duration", "1e-12"],
        ["--duration", "315360001"],
        ["-G", "18446744073709551615"],
        ["-G", "315360001"],
        ["-C", "18446744073709551615"],
    ] {
        let mut all = vec!["-i", "x", "-w", "f"];
        all.extend(args);
        let err = capture(&all)
            .err()
            .unwrap_or_else(|| panic!("{args:?} accepted"));
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{args:?}"
        );
    }
    let c = capture(&[
        "-i",
        "x",
        "-w",
        "f",
        "--duration",
        "315360000",
        "-G",
        "315360000",
    ])
    .unwrap();
    assert_eq!(c.duration, Some(Duration::from_secs(MAX_SECS)));
    assert_eq!(c.rotate_seconds, Some(MAX_SECS));
    let c = capture(&["-i", "x", "-w", "f", "-C", "1000000000"]).unwrap();
    assert_eq!(c.file_size, Some(MAX_FILE_MB));
}

#[test]
fn pod_selector_forms() {
    let c = capture(&["--uid", "1234-5678"]).unwrap();
    assert_eq!(c.uid.as_deref(), Some("1234-5678"));
    let c = capture(&[
        "--container",
        "abc1",
        "--runtime-endpoint",
        "unix:///x.sock",
    ])
    .unwrap();
    assert_eq!(c.container.as_deref(), Some("abc1"));
    assert_eq!(
        c.runtime.runtime_endpoint.as_deref(),
        Some("unix:///x.sock")
    );
    assert!(capture(&["--uid", "u", "-i", "eth0"]).is_err());
}

#[test]
fn pods_table_aligns_columns() {
    let row = |a: &str, b: &str| [a, b, "Ready", "10.0.0.1", "veth1", "7", "u"].map(String::from);
    let out = table(&[row("NAMESPACE", "NAME"), row("default", "a-long-name")]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].find("NAME "), lines[1].find("a-long-name"));
    assert_eq!(lines[0].find("Ready"), lines[1].find("Ready"));
}

#[test]
fn ring_size_is_a_power_of_two() {
    assert_eq!(ring_bytes(8192), 8 << 20);
    assert_eq!(ring_bytes(100), 128 * 1024);
    assert_eq!(ring_bytes(1), 4096);
}

#[test]
fn filter_words_follow_the_target() {
    let c = capture(&[
        "web",
        "tcp",
        "port",
        "8080",
        "and",
        "not",
        "host",
        "10.245.0.1",
    ])
    .unwrap();
    assert_eq!(c.pod_word(), Some("web"));
    assert_eq!(
        c.filter_words().join(" "),
        "tcp port 8080 and not host 10.245.0.1"
    );
    let c = capture(&["web", "tcp port 8080 and not host 10.245.0.1"]).unwrap();
    assert_eq!(c.filter_words(), ["tcp port 8080 and not host 10.245.0.1"]);
    for target in [
        ["-i", "eth0"],
        ["--pid", "1"],
        ["--uid", "u"],
        ["--container", "c"],
    ] {
        let c = capture(&[target[0], target[1], "tcp", "port", "80"]).unwrap();
        assert_eq!(c.pod_word(), None);
        assert_eq!(c.filter_words(), ["tcp", "port", "80"]);
    }
    let c = capture(&["web"]).unwrap();
    assert!(c.filter_words().is_empty());
}

#[test]
fn filter_file_and_dump_flags() {
    let c = capture(&["-i", "eth0", "-F", "f.txt", "-ddd"]).unwrap();
    assert_eq!(
        c.filter_file.as_deref(),
        Some(std::path::Path::new("f.txt"))
    );
    assert_eq!(c.dump, 3);
    // Options after the pod still parse as options.
    let c = capture(&["web", "-d", "udp"]).unwrap();
    assert_eq!((c.dump, c.filter_words()), (1, &["udp".to_string()][..]));
}

#[test]
fn dump_filter_needs_no_target() {
    let c = capture(&["-d", "-i", "no-such-iface", "tcp", "port", "80"]).unwrap();
    let out = c.dump_filter().unwrap();
    assert!(out.starts_with("(000) ldh      [12]\n"), "{out}");
    assert!(out.ends_with("ret      #0\n"), "{out}");
    let c = capture(&["-d", "web", "-s", "96"]).unwrap();
    assert_eq!(c.dump_filter().unwrap(), "(000) ret      #96\n");
    // The first word is still the pod, and is still checked.
    let err = capture(&["-d", "tcp port 80"])
        .unwrap()
        .dump_filter()
        .unwrap_err();
    assert!(err.to_string().contains("no whitespace"), "{err}");
}

#[test]
fn filter_from_file_or_words_not_both() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter");
    std::fs::write(&path, "udp port 53 # dns\n").unwrap();
    let file = path.to_str().unwrap();
    let c = capture(&["-i", "eth0", "-F", file, "-d"]).unwrap();
    assert_eq!(
        c.dump_filter().unwrap(),
        capture(&["-i", "eth0", "-d", "udp", "port", "53"])
            .unwrap()
            .dump_filter()
            .unwrap()
    );
    // For a pod, the first word is the pod and may come with -F.
    assert!(capture(&["web", "-F", file, "-d"])
        .unwrap()
        .dump_filter()
        .is_ok());
    let err = capture(&["-i", "eth0", "-F", file, "-d", "tcp"])
        .unwrap()
        .dump_filter()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a filter expression was given both with -F and on the command line (\"tcp\")"
    );
    let err = capture(&["-d", "--pid", "1", "tcp", "prt", "80"])
        .unwrap()
        .dump_filter()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid filter expression \"tcp prt 80\": syntax error"
    );
}

#[test]
fn usage_errors_fit_on_one_line() {
    let err = capture(&["-i", "x", "--duration", "1e300"]).unwrap_err();
    let line = usage_error_line(&err.render().to_string());
    assert_eq!(
        line,
        "invalid value '1e300' for '--duration <SECS>': \"1e300\" is longer than 315360000 seconds (ten years)"
    );
    let err = Cli::try_parse_from(["podtrace", "capture", "--nope"]).unwrap_err();
    assert_eq!(
        usage_error_line(&err.render().to_string()),
        "unexpected argument '--nope' found"
    );
    let err = Cli::try_parse_from(["podtrace"]).unwrap_err();
    assert!(!usage_error_line(&err.render().to_string()).contains('\n'));
}

#[test]
fn several_pods_write_pcapng_unless_pcap_is_asked_for() {
    use super::plan::choose_format;
    let file = |name: &str| Output::File(name.into());
    // One pod: as before.
    assert_eq!(
        choose_format(&file("x.pcap"), None, false),
        Ok(Format::Pcap)
    );
    assert_eq!(choose_format(&file("x"), None, false), Ok(Format::Pcap));
    assert_eq!(
        choose_format(&Output::Stdout, None, false),
        Ok(Format::Pcap)
    );
    // Several: pcapng, since classic pcap cannot say which pod.
    assert_eq!(
        choose_format(&file("x.pcapng"), None, true),
        Ok(Format::Pcapng)
    );
    assert_eq!(choose_format(&file("x"), None, true), Ok(Format::Pcapng));
    assert_eq!(
        choose_format(&Output::Stdout, None, true),
        Ok(Format::Pcapng)
    );
    let err = choose_format(&file("x.pcap"), None, true).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("x.pcap is classic pcap, which cannot say which pod"));
    // Asked for by name of the format: merged, with a warning.
    assert_eq!(
        choose_format(&file("x.pcap"), Some(Format::Pcap), true),
        Ok(Format::Pcap)
    );
}

#[test]
fn pods_by_selector_by_names_and_on_every_namespace() {
    let c = capture(&["-l", "app=web", "-n", "prod", "tcp", "port", "80"]).unwrap();
    assert_eq!(c.selector.as_deref(), Some("app=web"));
    // With -l every word is the filter.
    assert_eq!(c.pod_word(), None);
    assert_eq!(c.filter_words(), ["tcp", "port", "80"]);
    let c = capture(&["-A", "udp"]).unwrap();
    assert!(c.all_namespaces);
    assert_eq!(c.filter_words(), ["udp"]);
    let c = capture(&["web-1,prod/db-0", "-n", "staging", "--wait", "icmp"]).unwrap();
    assert_eq!(c.pod_word(), Some("web-1,prod/db-0"));
    assert!(c.wait);
    assert_eq!(c.filter_words(), ["icmp"]);
    assert!(capture(&["web", "--follow"]).unwrap().follow);
    // Options that cannot go together.
    for args in [
        &["-l", "app=web", "-i", "eth0"][..],
        &["-A", "-n", "prod"],
        &["-l", "a=b", "--follow"],
        &["-A", "--follow"],
        &["--uid", "u", "--follow"],
        &["-i", "eth0", "--wait"],
    ] {
        assert!(capture(args).is_err(), "{args:?} accepted");
    }
}

#[tokio::test]
async fn bad_selections_are_refused_before_the_runtime_is_asked() {
    for (args, want) in [
        (
            &[
                "-l",
                "app in (web",
                "--runtime-endpoint",
                "unix:///nonexistent",
            ][..],
            "invalid label selector \"app in (web\": '(' without ')'",
        ),
        (
            &[
                "web,db",
                "--follow",
                "--runtime-endpoint",
                "unix:///nonexistent",
            ],
            "--follow is for one pod named on the command line",
        ),
        (
            &["web,", "--runtime-endpoint", "unix:///nonexistent"],
            "invalid pod \"\": empty pod name",
        ),
        (
            &[
                "web,db",
                "-w",
                "x.pcap",
                "--runtime-endpoint",
                "unix:///nonexistent",
            ],
            "x.pcap is classic pcap",
        ),
    ] {
        let err = capture(args).unwrap().plan(false).await.err().unwrap();
        let text = podtrace::error_chain(err.as_ref());
        assert!(text.starts_with(want), "{args:?}: {text}");
    }
}
