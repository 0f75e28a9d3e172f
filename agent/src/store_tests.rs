use super::*;
use crate::test_util::{make_info, random_bytes};
use std::os::unix::fs::PermissionsExt;

const PL: u64 = 16 * 1024;

fn disk() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(4))
}

async fn open_store(downdir: &Path, info: &Arc<Info>, ih: InfoHash) -> Arc<Store> {
    Arc::new(
        Store::create(downdir, info.clone(), ih, disk())
            .await
            .unwrap(),
    )
}

async fn fill(store: &Arc<Store>, info: &Arc<Info>, stream: &[u8]) {
    for i in 0..store.lengths().num_pieces() {
        let idx = PieceIndex(i);
        let off = store.lengths().piece_offset(idx) as usize;
        let len = store.lengths().piece_len(idx).unwrap() as usize;
        let data = Bytes::copy_from_slice(&stream[off..off + len]);
        assert!(piece_matches(info.clone(), idx, data.clone())
            .await
            .unwrap());
        store.write_piece(idx, data).await.unwrap();
    }
}

#[tokio::test]
async fn cross_file_pieces_short_last_piece_empty_file_and_publish() {
    let dir = tempfile::tempdir().unwrap();
    let (info, stream) = make_info(
        &[
            ("a.bin", random_bytes(20_000), 0o755),
            ("empty", Vec::new(), 0o600),
            ("sub/dir/b.bin", random_bytes(30_000), 0),
        ],
        PL,
    );
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = open_store(dir.path(), &info, ih).await;
    assert_eq!(store.lengths().num_pieces(), 4);
    assert_eq!(
        store.lengths().piece_len(PieceIndex(3)),
        Some(50_000 - 3 * 16_384)
    );
    // Files appear with their first piece, not before.
    let staged = |p: &str| staging_dir(dir.path(), &ih).join(p).is_file();
    assert!(staging_dir(dir.path(), &ih).is_dir());
    assert!(!staged("a.bin") && !staged("sub/dir/b.bin") && !staged("empty"));
    fill(&store, &info, &stream).await;
    assert!(staged("a.bin") && staged("sub/dir/b.bin"));
    // Piece 1 spans a.bin and b.bin (across the empty file).
    let block = store.read_block(PieceIndex(1), 0, 16_384).unwrap();
    assert_eq!(&block[..], &stream[16_384..32_768]);
    let bad = Bytes::from(vec![0u8; 16_384]);
    assert!(!piece_matches(info.clone(), PieceIndex(0), bad)
        .await
        .unwrap());

    let dest = store.publish(Some("out/x".into())).await.unwrap();
    assert!(dest.ends_with("out/x"));
    let a = fs::read(dest.join("a.bin")).unwrap();
    let b = fs::read(dest.join("sub/dir/b.bin")).unwrap();
    assert_eq!([a, b].concat(), stream);
    assert_eq!(fs::read(dest.join("empty")).unwrap().len(), 0);
    let mode = |p: &str| fs::metadata(dest.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("a.bin"), 0o755);
    assert_eq!(mode("empty"), 0o600);
    assert_eq!(mode("sub/dir/b.bin"), DEFAULT_MODE);
    assert!(
        !store.staging().exists(),
        "staging is removed after publish"
    );
    // Uploads keep working from the published files.
    let block = store.read_block(PieceIndex(3), 0, 848).unwrap();
    assert_eq!(&block[..], &stream[49_152..]);
}

#[tokio::test]
async fn reopen_resumes_verified_pieces_and_cancel_removes_staging() {
    let dir = tempfile::tempdir().unwrap();
    let (info, stream) = make_info(&[("f", random_bytes(40_000), 0o644)], PL);
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = open_store(dir.path(), &info, ih).await;
    assert!(!store.is_resumable());
    let piece = Bytes::copy_from_slice(&stream[..16_384]);
    store.write_piece(PieceIndex(0), piece).await.unwrap();
    drop(store);
    let store = open_store(dir.path(), &info, ih).await;
    assert!(store.is_resumable());
    assert_eq!(
        &store.read_piece(PieceIndex(0)).await.unwrap()[..],
        &stream[..16_384]
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    assert_eq!(
        store.verified_pieces(&cancel).await.unwrap(),
        vec![PieceIndex(0)]
    );
    store.remove_staging().await.unwrap();
    assert!(!staging_dir(dir.path(), &ih).exists());
    assert!(!dir.path().join("f").exists());
    // A write that comes after the cancel fails and creates nothing.
    let late = Bytes::copy_from_slice(&stream[16_384..32_768]);
    assert!(matches!(
        store.write_piece(PieceIndex(1), late).await,
        Err(Error::Stopped)
    ));
    assert!(!staging_dir(dir.path(), &ih).exists());
}

#[tokio::test]
async fn resume_skips_files_never_created_and_publish_refuses_a_short_file() {
    let dir = tempfile::tempdir().unwrap();
    let (info, stream) = make_info(
        &[
            ("a.bin", random_bytes(20_000), 0o644),
            ("b.bin", random_bytes(30_000), 0o644),
        ],
        PL,
    );
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = open_store(dir.path(), &info, ih).await;
    // Only the last piece (inside b.bin) reaches the disk; a.bin never exists.
    let last = Bytes::copy_from_slice(&stream[49_152..]);
    store.write_piece(PieceIndex(3), last).await.unwrap();
    assert!(!staging_dir(dir.path(), &ih).join("a.bin").exists());
    drop(store);
    let store = open_store(dir.path(), &info, ih).await;
    let cancel = tokio_util::sync::CancellationToken::new();
    assert_eq!(
        store.verified_pieces(&cancel).await.unwrap(),
        vec![PieceIndex(3)]
    );
    fill(&store, &info, &stream).await;
    // A staged file cut short behind the store's back is not published.
    let b = staging_dir(dir.path(), &ih).join("b.bin");
    fs::OpenOptions::new()
        .write(true)
        .open(&b)
        .unwrap()
        .set_len(100)
        .unwrap();
    let err = store.publish(None).await.unwrap_err();
    assert!(err.to_string().contains("100 of 30000"), "{err}");
    assert!(!dir.path().join("a.bin").exists() && !dir.path().join("b.bin").exists());
}

#[tokio::test]
async fn a_task_of_many_files_keeps_few_handles_open_and_serves_after_publish() {
    let dir = tempfile::tempdir().unwrap();
    let count = 3 * crate::file_set::MAX_OPEN_FILES;
    let files: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| (format!("d{}/f{i}", i % 7), random_bytes(1_000 + i)))
        .collect();
    let spec: Vec<(&str, Vec<u8>, u32)> = files
        .iter()
        .map(|(p, d)| (p.as_str(), d.clone(), 0o644))
        .collect();
    let (info, stream) = make_info(&spec, PL);
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = open_store(dir.path(), &info, ih).await;
    fill(&store, &info, &stream).await;
    assert!(store.files.open_count() <= crate::file_set::MAX_OPEN_FILES);
    let dest = store.publish(None).await.unwrap();
    for (p, d) in &files {
        assert_eq!(&fs::read(dest.join(p)).unwrap(), d, "{p}");
    }
    // Every piece still reads back, reopening the published files by path.
    for i in 0..store.lengths().num_pieces() {
        let idx = PieceIndex(i);
        let off = store.lengths().piece_offset(idx) as usize;
        let len = store.lengths().piece_len(idx).unwrap();
        let block = store.read_block(idx, 0, len).unwrap();
        assert_eq!(&block[..], &stream[off..off + len as usize]);
    }
    assert!(store.files.open_count() <= crate::file_set::MAX_OPEN_FILES);
}

#[test]
fn dest_dir_must_stay_inside() {
    assert_eq!(check_dest_dir(None).unwrap(), PathBuf::new());
    assert_eq!(check_dest_dir(Some("a/./b")).unwrap(), PathBuf::from("a/b"));
    for bad in ["../x", "a/../../x", "/etc", "a/..", "a\\b"] {
        assert!(
            matches!(check_dest_dir(Some(bad)), Err(Error::UnsafePath { .. })),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn escaping_symlink_is_refused_and_nothing_is_published() {
    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
    fs::create_dir(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("good")).unwrap();
    let (info, stream) = make_info(
        &[
            ("ok", random_bytes(100), 0),
            ("evil/f", random_bytes(100), 0),
        ],
        PL,
    );
    let info = Arc::new(info);
    let store = open_store(dir.path(), &info, info.info_hash().unwrap()).await;
    fill(&store, &info, &stream).await;
    let e = store.publish(None).await.unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    let e = store.publish(Some("evil".into())).await.unwrap_err();
    assert!(matches!(e, Error::UnsafePath { .. }), "{e}");
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing written outside downdir"
    );
    assert!(
        !dir.path().join("ok").exists(),
        "no file published when a check fails"
    );
    // A symlink that stays inside downdir is fine.
    let dest = store.publish(Some("good".into())).await.unwrap();
    assert!(dest.join("evil/f").is_file());
    assert!(dir.path().join("real/ok").is_file());
}

#[tokio::test]
async fn writes_are_written_back_in_batches_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (info, _) = make_info(
        &[("a.bin", vec![1; 100], 0), ("b.bin", vec![2; 100], 0)],
        PL,
    );
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = Store::create(dir.path(), info, ih, disk()).await.unwrap();
    // Below the threshold nothing is due; crossing it hands over every file
    // touched since the last batch.
    assert_eq!(store.note_written(0, 150), None);
    let due = store.note_written(0, WRITEBACK_EVERY).expect("due");
    assert_eq!(due.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    // While that batch runs, no second one starts.
    assert_eq!(store.note_written(150, WRITEBACK_EVERY), None);
    store.writeback(&BTreeSet::from([0, 1]));
    let next = store.note_written(150, 1).expect("due after the first");
    assert_eq!(next.into_iter().collect::<Vec<_>>(), vec![1]);
}

#[tokio::test]
async fn the_last_bytes_of_a_task_are_written_back_more_often() {
    let dir = tempfile::tempdir().unwrap();
    let total = 2 * WRITEBACK_EVERY;
    let (info, _) = make_info(&[("big.bin", vec![7; total as usize], 0)], 1 << 20);
    let info = Arc::new(info);
    let ih = info.info_hash().unwrap();
    let store = Store::create(dir.path(), info, ih, disk()).await.unwrap();
    let step = FINAL_WRITEBACK_EVERY;
    let mut at = 0;
    let mut write = || {
        let due = store.note_written(at, step);
        at += step;
        due
    };
    // Far from the end, one batch per WRITEBACK_EVERY bytes.
    for _ in 1..WRITEBACK_EVERY / step {
        assert_eq!(write(), None);
    }
    let due = write().expect("a batch after WRITEBACK_EVERY bytes");
    assert_eq!(due.into_iter().collect::<Vec<_>>(), vec![0]);
    store.writeback(&BTreeSet::from([0]));
    // In the last WRITEBACK_EVERY bytes, one per FINAL_WRITEBACK_EVERY, so
    // publishing has at most that much left to sync.
    for _ in 0..WRITEBACK_EVERY / step {
        assert!(store.note_written(at, step).is_some());
        at += step;
        store.writeback(&BTreeSet::from([0]));
    }
}
