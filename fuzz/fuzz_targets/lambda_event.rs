//! The event parser and the HTTP edge behind it: any text as the invocation payload of an API
//! function, read by `lambda_http::request::from_str` as the runtime reads it (see
//! `parse_event` for the panics of lambda_http's own conversion, which the runtime catches),
//! and, when that gives a request, handed to every API handler over in-memory fakes. No panic
//! in our code, and every answer is a status of the contract with its JSON error.

#![no_main]

use advance_order::AdvanceOrder;
use flash_aws::http::caller;
use flash_domain::UserId;
use flash_fuzz::{block_on, check_response, parse_event, World};
use get_order::GetOrder;
use libfuzzer_sys::fuzz_target;
use place_order::PlaceOrder;
use products::Products;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(req) = parse_event(text) else {
        return;
    };
    if let Ok(c) = caller(&req) {
        assert_eq!(UserId::parse(c.user.as_str()).as_ref(), Ok(&c.user));
    }
    let world = World::new();
    let (store, queue) = (world.store, world.queue);
    block_on(async {
        // Each handler gets the same request: whatever route it was meant for.
        let again = || parse_event(text).expect("parsed once already");
        check_response(
            PlaceOrder::new(store.clone(), queue.clone())
                .with_rate_limit(store.clone())
                .handle(again())
                .await,
        );
        check_response(
            Products::new(store.clone())
                .with_rate_limit(store.clone())
                .handle(again())
                .await,
        );
        check_response(
            GetOrder {
                store: store.clone(),
            }
            .handle(again())
            .await,
        );
        check_response(
            AdvanceOrder::new(store.clone())
                .with_rate_limit(store)
                .handle(req)
                .await,
        );
    });
});
