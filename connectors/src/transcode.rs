//! A reader that turns GBK / GB 18030 bytes into UTF-8 as it streams.

use std::io::{self, Read};

use encoding_rs::{CoderResult, Decoder, Encoding};

/// Decodes `inner` from `encoding` to UTF-8, chunk by chunk.
///
/// Malformed byte sequences become U+FFFD, so a broken file still yields rows
/// whose values then fail validation where they matter, instead of a silent
/// truncation.
pub struct Transcode<R> {
    inner: R,
    decoder: Decoder,
    input: Vec<u8>,
    in_len: usize,
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    eof: bool,
}

impl<R> std::fmt::Debug for Transcode<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transcode")
    }
}

impl<R: Read> Transcode<R> {
    /// A transcoding reader over `inner`.
    pub fn new(inner: R, encoding: &'static Encoding) -> Self {
        Self {
            inner,
            decoder: encoding.new_decoder_with_bom_removal(),
            input: vec![0; 64 * 1024],
            in_len: 0,
            out: vec![0; 3 * 64 * 1024 + 16],
            out_pos: 0,
            out_len: 0,
            eof: false,
        }
    }
}

impl<R: Read> Read for Transcode<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                return Ok(n);
            }
            if self.eof && self.in_len == 0 {
                return Ok(0);
            }
            if !self.eof && self.in_len < self.input.len() {
                let n = self.inner.read(&mut self.input[self.in_len..])?;
                if n == 0 {
                    self.eof = true;
                }
                self.in_len += n;
            }
            let (result, read, written, _) =
                self.decoder.decode_to_utf8(&self.input[..self.in_len], &mut self.out, self.eof);
            self.input.copy_within(read..self.in_len, 0);
            self.in_len -= read;
            self.out_pos = 0;
            self.out_len = written;
            if self.eof && result == CoderResult::InputEmpty && written == 0 {
                self.in_len = 0;
            }
        }
    }
}

/// UTF-8 input as it comes, without a leading byte-order mark. Bytes are
/// not copied or checked here: the CSV reader checks UTF-8 itself and names
/// the line of an invalid byte (a GBK file sent without `charset=gbk`).
pub struct SkipBom<R> {
    inner: R,
    head: [u8; 3],
    head_len: usize,
    head_pos: usize,
    started: bool,
}

impl<R> std::fmt::Debug for SkipBom<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SkipBom")
    }
}

impl<R: Read> SkipBom<R> {
    /// `inner` without its byte-order mark.
    pub fn new(inner: R) -> Self {
        Self { inner, head: [0; 3], head_len: 0, head_pos: 0, started: false }
    }
}

impl<R: Read> Read for SkipBom<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.started {
            while self.head_len < 3 {
                let n = self.inner.read(&mut self.head[self.head_len..])?;
                if n == 0 {
                    break;
                }
                self.head_len += n;
            }
            self.started = true;
            if self.head[..self.head_len] == [0xEF, 0xBB, 0xBF] {
                self.head_len = 0;
            }
        }
        if self.head_pos < self.head_len {
            let n = buf.len().min(self.head_len - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_skipped_and_nothing_else() {
        for (input, want) in [
            (&b"\xEF\xBB\xBFid,name\n"[..], &b"id,name\n"[..]),
            (b"id,name\n", b"id,name\n"),
            (b"\xEF\xBB", b"\xEF\xBB"),
            (b"", b""),
            (b"\xEF\xBB\xBF", b""),
        ] {
            // One byte at a time, so the mark arrives in pieces.
            let mut out = Vec::new();
            SkipBom::new(std::io::BufReader::with_capacity(1, input)).read_to_end(&mut out).expect("reads");
            assert_eq!(out, want);
        }
    }

    #[test]
    fn gbk_to_utf8_across_chunk_boundaries() {
        let text = "姓名,县区\n张三,梅江区\n".repeat(20_000);
        let (gbk, _, bad) = encoding_rs::GBK.encode(&text);
        assert!(!bad);
        let mut out = String::new();
        Transcode::new(&gbk[..], encoding_rs::GBK).read_to_string(&mut out).expect("decodes");
        assert_eq!(out, text);
    }
}
