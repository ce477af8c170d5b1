//! Listings for the operator page: sessions and miners, newest first, in bounded pages.

use super::*;

#[test]
fn sessions_page_newest_first_with_a_cursor() {
    let mut w = World::new();
    let ids: Vec<SessionId> = (0..5).map(|_| w.session(1, 1)).collect();
    let (page, more) = w.s.sessions_page(None, 2);
    assert_eq!(
        page.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    assert!(more, "three older sessions follow");
    let (page, more) = w.s.sessions_page(Some(ids[3]), 2);
    assert_eq!(
        page.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    assert!(more);
    let (page, more) = w.s.sessions_page(Some(ids[1]), 2);
    assert_eq!(page.iter().map(|s| s.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert!(!more, "the oldest session ends the listing");
    let (page, more) = w.s.sessions_page(None, 5);
    assert_eq!(page.len(), 5);
    assert!(!more, "exactly the limit: nothing follows");
    let (page, more) = w.s.sessions_page(None, 0);
    assert!(page.is_empty());
    assert!(more);
}

#[test]
fn sessions_page_carries_counts_per_state() {
    let mut w = World::new();
    let s = w.session(1, 1);
    w.miner(4);
    let t = w.submit(s, "a");
    w.submit(s, "b");
    w.complete(t, "done");
    let (page, _) = w.s.sessions_page(None, 10);
    assert_eq!(page[0].counts.completed, 1);
    assert_eq!(page[0].counts.live(), 1);
}

#[test]
fn miners_page_newest_first() {
    let mut w = World::new();
    let ids: Vec<MinerId> = (0..3).map(|_| w.miner(2)).collect();
    let (page, more) = w.s.miners_page(None, 10);
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    assert!(!more);
    let (page, more) = w.s.miners_page(Some(ids[2]), 1);
    assert_eq!(page.iter().map(|m| m.id).collect::<Vec<_>>(), vec![ids[1]]);
    assert!(more);
}
