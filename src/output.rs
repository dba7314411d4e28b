//! What the command line writes for people and pipes: a reader that went away early
//! (`longhaul check | head -1`) ends that output quietly; nothing here ever panics.

use std::fmt::Display;
use std::io::{self, Write};

/// Writes `text` to stdout. A closed pipe is not an error: nobody is left to read.
pub fn stdout(text: impl Display) {
    if let Err(e) = write_all(&mut io::stdout().lock(), &text)
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        stderr(format_args!("error: cannot write to stdout: {e}\n"));
    }
}

/// Writes `text` to stderr; if even that fails, there is nowhere left to say so.
pub fn stderr(text: impl Display) {
    let _ = write_all(&mut io::stderr().lock(), &text);
}

fn write_all(out: &mut impl Write, text: &impl Display) -> io::Result<()> {
    write!(out, "{text}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose reader has gone.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_is_an_error_value_not_a_panic() {
        let err = write_all(&mut Closed, &"text").expect_err("the write fails");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
