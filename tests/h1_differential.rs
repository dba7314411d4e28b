//! Differential property test of longhaul's own HTTP/1 client (`longhaul::h1`) against hyper's:
//! generated responses, valid and broken, split into random pieces, must give both clients the
//! same status, headers, framing, body, trailers and reuse verdict, or make both fail. The only
//! tolerated difference is the named exception in `support/h1_oracle.rs::agree`.

#[path = "support/h1_oracle.rs"]
mod oracle;

use http::Method;
use proptest::prelude::*;
use proptest::sample::select;

/// One header line of the generated head.
#[derive(Debug, Clone)]
enum Field {
    /// Content-Length with the body's true length.
    TrueLength,
    /// Content-Length with any value, valid or not.
    Length(&'static str),
    TransferEncoding(&'static str),
    Connection(&'static str),
    Other(&'static str, &'static str),
    /// An obs-fold continuation line.
    Folded,
}

#[derive(Debug, Clone)]
enum BodyShape {
    /// The body bytes as they are (length-delimited or close-delimited).
    Raw,
    /// Chunked in pieces of the given sizes, each with an optional extension, then trailers.
    Chunked {
        sizes: Vec<usize>,
        extension: bool,
        trailers: Vec<(&'static str, &'static str)>,
    },
}

#[derive(Debug, Clone)]
struct Response {
    interim: Vec<&'static str>,
    http10: bool,
    status: &'static str,
    /// The framing header that matches `shape` (or none, close-delimited), then noise.
    framed: bool,
    keep_alive: bool,
    fields: Vec<Field>,
    bare_lf: Vec<bool>,
    body: Vec<u8>,
    shape: BodyShape,
    stray: Option<&'static [u8]>,
}

impl Response {
    fn wire(&self) -> Vec<u8> {
        let mut wire = Vec::new();
        for interim in &self.interim {
            wire.extend_from_slice(interim.as_bytes());
        }
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let mut lines = vec![format!("{version} {}", self.status)];
        if self.keep_alive {
            lines.push("Connection: keep-alive".to_string());
        }
        if self.framed {
            lines.push(match self.shape {
                BodyShape::Raw => format!("Content-Length: {}", self.body.len()),
                BodyShape::Chunked { .. } => "Transfer-Encoding: chunked".to_string(),
            });
        }
        for field in &self.fields {
            lines.push(match field {
                Field::TrueLength => format!("Content-Length: {}", self.body.len()),
                Field::Length(v) => format!("Content-Length: {v}"),
                Field::TransferEncoding(v) => format!("Transfer-Encoding: {v}"),
                Field::Connection(v) => format!("Connection: {v}"),
                Field::Other(n, v) => format!("{n}: {v}"),
                Field::Folded => " folded".to_string(),
            });
        }
        lines.push(String::new());
        for (i, line) in lines.iter().enumerate() {
            wire.extend_from_slice(line.as_bytes());
            let lf = self.bare_lf.get(i).copied().unwrap_or(false);
            wire.extend_from_slice(if lf { b"\n" } else { b"\r\n" });
        }
        match &self.shape {
            BodyShape::Raw => wire.extend_from_slice(&self.body),
            BodyShape::Chunked {
                sizes,
                extension,
                trailers,
            } => {
                let mut rest = &self.body[..];
                for &size in sizes {
                    let (chunk, after) = rest.split_at(size.min(rest.len()));
                    rest = after;
                    if chunk.is_empty() {
                        continue;
                    }
                    let ext = if *extension { ";name=\"v;x\"" } else { "" };
                    wire.extend_from_slice(format!("{:x}{ext}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                if !rest.is_empty() {
                    wire.extend_from_slice(format!("{:X}\r\n", rest.len()).as_bytes());
                    wire.extend_from_slice(rest);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n");
                for (name, value) in trailers {
                    wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
            }
        }
        if let Some(stray) = self.stray {
            wire.extend_from_slice(stray);
        }
        wire
    }
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => Just(Field::TrueLength),
        1 => select(vec!["0", "3", "007", "5, 5", "4, 5", "", "+3", "-1", "abc", "99999"]).prop_map(Field::Length),
        1 => select(vec!["chunked", "Chunked", " chunked ", "gzip", "gzip, chunked", "chunked, chunked", "identity"])
            .prop_map(Field::TransferEncoding),
        2 => select(vec!["close", "keep-alive", "Keep-Alive", "upgrade, close", "foo"]).prop_map(Field::Connection),
        4 => select(vec![("X-A", "1"), ("x-a", "2"), ("Server", "legacy"), ("Keep-Alive", "timeout=5"), ("X-Odd", "a\tb")])
            .prop_map(|(n, v)| Field::Other(n, v)),
        1 => Just(Field::Folded),
    ]
}

fn shape() -> impl Strategy<Value = BodyShape> {
    prop_oneof![
        Just(BodyShape::Raw),
        (
            prop::collection::vec(1usize..12, 0..4),
            any::<bool>(),
            prop::collection::vec(
                select(vec![("X-T", "1"), ("grpc-status", "0"), ("x-t", "2")]),
                0..3
            ),
        )
            .prop_map(|(sizes, extension, trailers)| BodyShape::Chunked {
                sizes,
                extension,
                trailers
            }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    (
        prop::collection::vec(
            select(vec![
                "HTTP/1.1 100 Continue\r\n\r\n",
                "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n",
            ]),
            0..3,
        ),
        prop::bool::weighted(0.3),
        (prop::bool::weighted(0.8), prop::bool::weighted(0.5)),
        select(vec![
            "200 OK",
            "201 Created",
            "204 No Content",
            "304 Not Modified",
            "404 Not Found",
            "500 Oops",
            "299 X",
        ]),
        prop::collection::vec(field(), 0..3),
        prop::collection::vec(prop::bool::weighted(0.03), 0..8),
        prop::collection::vec(any::<u8>(), 0..24),
        shape(),
        prop::option::weighted(
            0.15,
            select(vec![&b"HTTP/1.1 200 OK\r\n\r\n"[..], b"x", b"\r\n"]),
        ),
    )
        .prop_map(
            |(
                interim,
                http10,
                (framed, keep_alive),
                status,
                fields,
                bare_lf,
                body,
                shape,
                stray,
            )| {
                Response {
                    interim,
                    http10,
                    status,
                    framed,
                    keep_alive,
                    fields,
                    bare_lf,
                    body,
                    shape,
                    stray,
                }
            },
        )
}

/// A byte edit that breaks the wire in one place: a bad chunk size, a lost CR, a stray byte.
#[derive(Debug, Clone)]
enum Edit {
    None,
    Flip(prop::sample::Index, u8),
    Delete(prop::sample::Index),
    /// One CR of the wire dropped, leaving a bare LF.
    DropCr(prop::sample::Index),
    Insert(prop::sample::Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        12 => Just(Edit::None),
        1 => (any::<prop::sample::Index>(), select(vec![b'\n', b'\r', b'g', b' ', b';', b'0', b':', 0])).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Delete),
        2 => any::<prop::sample::Index>().prop_map(Edit::DropCr),
        1 => (any::<prop::sample::Index>(), select(vec![b'\n', b'\r', b'x', b' ', b'1'])).prop_map(|(i, b)| Edit::Insert(i, b)),
    ]
}

fn apply(edit: &Edit, mut wire: Vec<u8>) -> Vec<u8> {
    match edit {
        Edit::None => {}
        Edit::Flip(i, b) if !wire.is_empty() => {
            let at = i.index(wire.len());
            wire[at] = *b;
        }
        Edit::Delete(i) if !wire.is_empty() => {
            wire.remove(i.index(wire.len()));
        }
        Edit::DropCr(i) => {
            let crs: Vec<usize> = (0..wire.len()).filter(|&at| wire[at] == b'\r').collect();
            if !crs.is_empty() {
                wire.remove(crs[i.index(crs.len())]);
            }
        }
        Edit::Insert(i, b) => wire.insert(i.index(wire.len() + 1), *b),
        _ => {}
    }
    wire
}

/// `wire` cut at the given points.
fn split(wire: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    at.push(0);
    at.push(wire.len());
    at.sort_unstable();
    at.windows(2).map(|w| wire[w[0]..w[1]].to_vec()).collect()
}

fn check(method: &Method, pieces: &[Vec<u8>]) {
    let (hyper, ours) = oracle::run(method, pieces);
    if let Err(why) = oracle::agree(&hyper, &ours) {
        panic!(
            "wire {:?}\n{why}",
            String::from_utf8_lossy(&pieces.concat())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn hyper_and_longhaul_read_every_response_alike(
        response in response(),
        head_request in prop::bool::weighted(0.15),
        edit in edit(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let method = if head_request { Method::HEAD } else { Method::GET };
        let wire = apply(&edit, response.wire());
        check(&method, &split(&wire, &cuts));
    }

    #[test]
    fn one_byte_at_a_time_changes_nothing(response in response()) {
        let wire = response.wire();
        let pieces: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
        check(&Method::GET, &pieces);
    }
}

#[test]
fn ambiguous_framing_is_the_named_exception_and_hyper_reads_it() {
    let wire =
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let (hyper, ours) = oracle::run(&Method::GET, &[wire.to_vec()]);
    assert!(matches!(hyper, oracle::Outcome::Complete(..)), "{hyper:?}");
    assert_eq!(ours, oracle::Outcome::HeadError { ambiguous: true });
}

#[test]
fn a_reusable_response_is_reusable_for_both() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let (hyper, ours) = oracle::run(&Method::GET, &[wire.to_vec()]);
    let oracle::Outcome::Complete(_, tail) = &hyper else {
        panic!("{hyper:?}")
    };
    assert!(tail.reusable);
    assert_eq!(hyper, ours);
}

#[test]
fn stray_bytes_after_the_response_close_it_for_both() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    let (hyper, ours) = oracle::run(&Method::GET, &[wire, b"x".to_vec()]);
    let oracle::Outcome::Complete(_, tail) = &hyper else {
        panic!("{hyper:?}")
    };
    assert!(!tail.reusable);
    assert_eq!(hyper, ours);
}
