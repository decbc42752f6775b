use super::*;
use futures::stream;
use http_body_util::{BodyExt, StreamBody};

/// A client body of `chunks`, then `trailers`.
fn source(chunks: &[&'static [u8]], trailers: Option<HeaderMap>) -> UpBody {
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    if let Some(t) = trailers {
        frames.push(Ok(Frame::trailers(t)));
    }
    StreamBody::new(stream::iter(frames)).boxed()
}

async fn read_all(body: ReplayBody) -> Result<(Vec<u8>, Option<HeaderMap>), BoxError> {
    let collected = body.collect().await?;
    let trailers = collected.trailers().cloned();
    Ok((collected.to_bytes().to_vec(), trailers))
}

#[tokio::test]
async fn a_retry_sends_the_same_bytes_and_trailers() {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", "0".parse().unwrap());
    let r = Replay::new(source(&[b"hello ", b"world"], Some(t)));
    let first = read_all(r.attempt()).await.unwrap();
    assert_eq!(first.0, b"hello world");
    assert!(r.replayable());
    let second = read_all(r.attempt()).await.unwrap();
    assert_eq!(second, first);
}

#[tokio::test]
async fn a_retry_after_a_partial_read_replays_then_continues() {
    let r = Replay::new(source(&[b"ab", b"cd", b"ef"], None));
    let mut first = r.attempt();
    let f = first.frame().await.unwrap().unwrap();
    assert_eq!(f.into_data().unwrap(), "ab");
    drop(first);
    let (all, _) = read_all(r.attempt()).await.unwrap();
    assert_eq!(all, b"abcdef");
}

#[tokio::test]
async fn a_superseded_attempt_fails_instead_of_stealing_bytes() {
    let r = Replay::new(source(&[b"ab", b"cd"], None));
    let mut old = r.attempt();
    let new = r.attempt();
    assert!(old.frame().await.unwrap().is_err());
    assert_eq!(read_all(new).await.unwrap().0, b"abcd");
}

#[tokio::test]
async fn a_body_over_the_bound_is_not_kept() {
    static BIG: [u8; RETRY_BUFFER] = [7; RETRY_BUFFER];
    let r = Replay::new(source(&[b"x", &BIG], None));
    let (all, _) = read_all(r.attempt()).await.unwrap();
    assert_eq!(all.len(), RETRY_BUFFER + 1, "the first attempt gets it all");
    assert!(!r.replayable(), "but it is not kept for a retry");
    assert_eq!(r.0.lock().unwrap().chunks.len(), 0, "nor held in memory");
}

#[tokio::test]
async fn a_mirror_gets_the_whole_body_once_the_client_sent_it() {
    let mut t = HeaderMap::new();
    t.insert("x-t", "1".parse().unwrap());
    let r = Replay::new(source(&[b"ab", b"cd"], Some(t)));
    let mut done = r.on_complete();
    assert!(done.borrow().is_none(), "nothing read yet");
    read_all(r.attempt()).await.unwrap();
    let kept = done
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(kept.chunks.concat(), b"abcd");
    assert_eq!(kept.trailers.unwrap()["x-t"], "1");
    // Asked after the end: at once.
    assert_eq!(r.on_complete().borrow().as_ref().unwrap().chunks.len(), 2);
}

#[tokio::test]
async fn a_mirror_never_gets_a_body_over_the_bound_or_one_never_finished() {
    static BIG: [u8; RETRY_BUFFER] = [7; RETRY_BUFFER];
    let r = Replay::new(source(&[b"x", &BIG], None));
    let mut done = r.on_complete();
    read_all(r.attempt()).await.unwrap();
    assert!(done.wait_for(Option::is_some).await.is_err(), "overflowed");

    let r = Replay::new(source(&[b"ab", b"cd"], None));
    let mut done = r.on_complete();
    let mut first = r.attempt();
    first.frame().await.unwrap().unwrap();
    drop((first, r));
    assert!(done.wait_for(Option::is_some).await.is_err(), "abandoned");
}

#[tokio::test]
async fn a_body_of_known_length_is_complete_with_its_last_byte() {
    // As an HTTP/1.1 upstream reads it: up to the length, never past.
    let source = http_body_util::Full::new(Bytes::from_static(b"abcd"))
        .map_err(|e| match e {})
        .boxed();
    let r = Replay::new(source);
    let done = r.on_complete();
    let mut first = r.attempt();
    assert_eq!(
        first.frame().await.unwrap().unwrap().into_data().unwrap(),
        "abcd"
    );
    assert!(first.is_end_stream());
    assert_eq!(done.borrow().as_ref().unwrap().chunks.concat(), b"abcd");
}
