//! Sources that are programs (`command = ["/usr/local/bin/list-things", "--json"]`):
//! the program runs with the source's timeout, and its stdout is the response.
//! A non-zero exit, a timeout or more than `max_body` bytes of output is a failed poll
//! (nothing changes, invariant 3), with the start of stderr in the message.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::FetchError;

/// Runs `argv` and returns its stdout.
pub(super) async fn run(
    argv: &[String],
    timeout: Duration,
    max_body: u64,
) -> Result<Vec<u8>, FetchError> {
    let program = argv.first().map(String::as_str).unwrap_or_default();
    let fail = |detail: String| FetchError::Command(format!("command {program}: {detail}"));
    let mut child = Command::new(program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A poll cut off (timeout, shutdown, reload) must not leave the program behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start it: {e} (check the path and that the service may execute it)"
            ))
        })?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("no pipes to read".into()));
    };
    let work = async {
        let mut out = Vec::new();
        // One byte more than allowed tells "too large" from "exactly the limit".
        let mut limited_out = (&mut stdout).take(max_body.saturating_add(1));
        let mut err = Vec::new();
        let (r1, _) = tokio::join!(
            limited_out.read_to_end(&mut out),
            drain_keeping_start(&mut stderr, &mut err, 4096)
        );
        r1.map_err(|e| fail(format!("cannot read its output: {e}")))?;
        if out.len() as u64 > max_body {
            return Err(fail(format!(
                "its output is over max_body = {max_body} bytes; raise max_body for this source if that is right"
            )));
        }
        let status = child
            .wait()
            .await
            .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
        if !status.success() {
            let text: String = String::from_utf8_lossy(&err)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(300)
                .collect();
            let code = status
                .code()
                .map(|c| format!("exited with status {c}"))
                .unwrap_or_else(|| "was killed by a signal".into());
            return Err(fail(format!("{code}; stderr: {}", text.trim())));
        }
        Ok(out)
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(fail(format!(
            "did not finish within {} (timeout); it was killed",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Reads `from` to its end, keeping the first `keep` bytes in `into`: a program that
/// writes a lot to stderr must not block on a full pipe.
async fn drain_keeping_start(
    from: &mut tokio::process::ChildStderr,
    into: &mut Vec<u8>,
    keep: usize,
) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let room = keep.saturating_sub(into.len());
        into.extend_from_slice(&buf[..n.min(room)]);
    }
}
