//! Real secret values coming back from upstream become placeholders again
//! before they reach the guest: an endpoint that echoes request headers (or
//! a redirect that reflects a query) must not hand the guest the value it
//! is never supposed to hold.
//!
//! Bodies are scrubbed as they stream: each chunk is searched together with
//! the bytes carried over from the previous one, and the last
//! `longest value - 1` bytes are held back, since they could be the start
//! of a value that ends in the next chunk. With no secrets configured no
//! scrubber exists and bodies pass untouched.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aho_corasick::{AhoCorasick, MatchKind};
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame};

/// Finds every real value (current and revoked) and knows its placeholder.
#[derive(Debug)]
pub struct Scrubber {
    finder: AhoCorasick,
    placeholders: Vec<String>,
    /// Bytes held back between chunks: longest value - 1.
    window: usize,
}

impl Scrubber {
    /// `None` when there is nothing to look for.
    pub fn new(pairs: Vec<(String, String)>) -> Option<Scrubber> {
        let pairs: Vec<(String, String)> =
            pairs.into_iter().filter(|(v, _)| !v.is_empty()).collect();
        if pairs.is_empty() {
            return None;
        }
        let window = pairs.iter().map(|(v, _)| v.len()).max().unwrap_or(1) - 1;
        // Longest first where values overlap ("sk-new-sk-old" over "sk-old").
        // ASCII case is ignored: a value can come back case-folded (a URL's
        // host is lower-cased on the way), and that is the value too.
        let finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .build(pairs.iter().map(|(v, _)| v.as_bytes()))
            .expect("literal patterns always build");
        Some(Scrubber {
            finder,
            placeholders: pairs.into_iter().map(|(_, p)| p).collect(),
            window,
        })
    }

    /// Whether `text` holds a real value.
    pub fn found_in(&self, text: &[u8]) -> bool {
        self.finder.is_match(text)
    }

    /// `text` with every real value replaced by its placeholder.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if !self.finder.is_match(text) {
            return Cow::Borrowed(text);
        }
        Cow::Owned(self.finder.replace_all(text, &self.placeholders))
    }

    /// Header values (response headers, trailers), as bytes: a value
    /// beside a non-ASCII byte is still a value.
    pub fn headers(&self, headers: &mut http::HeaderMap) {
        for v in headers.values_mut() {
            if self.found_in(v.as_bytes()) {
                let clean = self.bytes(Bytes::copy_from_slice(v.as_bytes()));
                *v = http::HeaderValue::from_maybe_shared(clean)
                    .unwrap_or_else(|_| http::HeaderValue::from_static(""));
            }
        }
    }

    /// A whole buffered body.
    pub fn bytes(&self, body: Bytes) -> Bytes {
        if !self.finder.is_match(&body) {
            return body;
        }
        Bytes::from(self.finder.replace_all_bytes(&body, &self.placeholders))
    }

    /// Feed one chunk: returns what may be sent now; `carry` keeps the tail
    /// that could still be the start of a value.
    pub fn feed(&self, carry: &mut Bytes, chunk: Bytes) -> Bytes {
        let buf = if carry.is_empty() {
            chunk
        } else {
            let mut b = BytesMut::with_capacity(carry.len() + chunk.len());
            b.extend_from_slice(carry);
            b.extend_from_slice(&chunk);
            b.freeze()
        };
        let mut out: Option<BytesMut> = None;
        let mut done = 0;
        for m in self.finder.find_iter(&buf[..]) {
            let o = out.get_or_insert_with(|| BytesMut::with_capacity(buf.len()));
            o.extend_from_slice(&buf[done..m.start()]);
            o.extend_from_slice(self.placeholders[m.pattern().as_usize()].as_bytes());
            done = m.end();
        }
        // A value that ends in a later chunk starts after the last match and
        // within the window: hold those bytes back.
        let cut = done.max(buf.len().saturating_sub(self.window));
        *carry = buf.slice(cut..);
        match out {
            None => buf.slice(..cut), // no copy when nothing matched
            Some(mut o) => {
                o.extend_from_slice(&buf[done..cut]);
                o.freeze()
            }
        }
    }
}

/// A response body with real values replaced as it streams.
pub struct ScrubBody<B> {
    inner: B,
    scrubber: Arc<Scrubber>,
    carry: Bytes,
    /// Trailers (or the end) wait until the carried bytes are out.
    pending: Option<Option<Frame<Bytes>>>,
}

impl<B> ScrubBody<B> {
    pub fn new(inner: B, scrubber: Arc<Scrubber>) -> Self {
        ScrubBody {
            inner,
            scrubber,
            carry: Bytes::new(),
            pending: None,
        }
    }
}

impl<B> HttpBody for ScrubBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let me = &mut *self;
        if let Some(next) = me.pending.take() {
            return Poll::Ready(next.map(Ok));
        }
        loop {
            match Pin::new(&mut me.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = me.scrubber.feed(&mut me.carry, data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(frame) => {
                        let frame = match frame.into_trailers() {
                            Ok(mut trailers) => {
                                me.scrubber.headers(&mut trailers);
                                Frame::trailers(trailers)
                            }
                            Err(other) => other,
                        };
                        return Poll::Ready(Some(Ok(me.flush_then(Some(frame)))));
                    }
                },
                Poll::Ready(None) => {
                    if me.carry.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(me.flush_then(None))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.carry.is_empty() && self.inner.is_end_stream()
    }
}

impl<B> ScrubBody<B> {
    /// The carried bytes now (no value can complete any more), `next` after.
    fn flush_then(&mut self, next: Option<Frame<Bytes>>) -> Frame<Bytes> {
        let tail = std::mem::take(&mut self.carry);
        if tail.is_empty() {
            return next.unwrap_or_else(|| Frame::data(Bytes::new()));
        }
        self.pending = Some(next);
        Frame::data(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn scrubber() -> Scrubber {
        Scrubber::new(vec![
            ("sk-old".into(), "PH_A".into()),
            ("sk-new-sk-old".into(), "PH_A".into()),
            ("tok-123".into(), "PH_B".into()),
        ])
        .unwrap()
    }

    /// Every way of cutting the input into two or three chunks gives the
    /// same output as scrubbing it whole.
    #[test]
    fn values_split_across_chunks_are_found() {
        let s = scrubber();
        let input = b"x sk-new-sk-old y tok-123tok-123 sk-ol sk-old!".to_vec();
        let whole = s.bytes(Bytes::from(input.clone()));
        assert_eq!(
            &whole[..],
            b"x PH_A y PH_BPH_B sk-ol PH_A!",
            "longest value wins"
        );
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let mut carry = Bytes::new();
                let mut out = Vec::new();
                for part in [&input[..i], &input[i..j], &input[j..]] {
                    out.extend_from_slice(&s.feed(&mut carry, Bytes::copy_from_slice(part)));
                    assert!(carry.len() <= s.window, "held back at most the window");
                }
                out.extend_from_slice(&carry);
                assert_eq!(out, whole, "cut at {i},{j}");
            }
        }
    }

    #[test]
    fn clean_chunks_are_not_copied() {
        let s = scrubber();
        let mut carry = Bytes::new();
        let chunk = Bytes::from(vec![b'a'; 4096]);
        let out = s.feed(&mut carry, chunk.clone());
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "a slice of the same buffer");
        assert_eq!(out.len() + carry.len(), 4096);
        assert!(Scrubber::new(vec![("".into(), "P".into())]).is_none());
    }

    #[test]
    fn headers_and_whole_bodies() {
        let s = scrubber();
        assert_eq!(s.text("Bearer tok-123"), "Bearer PH_B");
        assert!(matches!(s.text("plain"), Cow::Borrowed(_)));
        assert!(s.found_in(b"..sk-old.."));
        assert!(!s.found_in(b"sk-ol"));
    }

    #[tokio::test]
    async fn streaming_body_one_byte_at_a_time() {
        let s = Arc::new(scrubber());
        let text = b"echo: tok-123 and sk-new-sk-old end";
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .iter()
            .map(|b| Ok(Frame::data(Bytes::copy_from_slice(&[*b]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let out = ScrubBody::new(body, s).collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"echo: PH_B and PH_A end");
    }

    #[tokio::test]
    async fn trailers_and_non_ascii_headers_are_scrubbed() {
        let s = Arc::new(scrubber());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo", http::HeaderValue::from_static("TOK-123"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"body"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let got = ScrubBody::new(body, s.clone()).collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["x-echo"], "PH_B");
        let mut h = http::HeaderMap::new();
        h.insert(
            "x-echo",
            http::HeaderValue::from_bytes(b"tok-123\xc3\xa9").unwrap(),
        );
        s.headers(&mut h);
        assert_eq!(h["x-echo"].as_bytes(), b"PH_B\xc3\xa9");
    }
}
