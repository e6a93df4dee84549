//! The notification page in a real browser (headless Chromium): with the token in the URL
//! fragment it connects, drops the token from the address, and lists a comment on the
//! user's post as it happens.

use std::time::Duration;

use keel_tests::TestApp;
use keel_tests::browser::Browser;
use keel_tests::eventually;
use keel_tests::notifications::RunningRelay;
use reqwest::Method;
use serde_json::{Value, json};

/// What the page shows: its status line, the notification list (HTML and item texts)
/// and its address. Null-safe, so it can be asked while the page is still loading.
const PAGE: &str = r#"({
    status: document.getElementById('status')?.textContent ?? null,
    list: document.getElementById('notifications')?.outerHTML ?? null,
    comments: [...document.querySelectorAll('li[data-type="comment.added"]')]
        .map((li) => li.textContent),
    href: location.href,
})"#;

async fn page(browser: &Browser) -> Result<Value, String> {
    browser.evaluate(PAGE).await.map_err(|e| format!("{e:#}"))
}

/// The page's state for a failure message, without the token.
fn described(page: &Value, token: &str) -> String {
    format!(
        "status {}, list {}, address {}",
        page["status"],
        page["list"],
        page["href"].to_string().replace(token, "<token>")
    )
}

#[tokio::test]
async fn the_page_lists_a_notification_live_in_chromium() {
    let app = TestApp::spawn().await.unwrap();
    let relay = RunningRelay::start(&app).await;
    let (_author, author_token) = app.register("Ada Author").await;
    let (_reader, reader_token) = app.register("Rita Reader").await;
    let post = app.published_post(&author_token).await;

    let browser = Browser::open(&format!("{}/#token={author_token}", app.base_url))
        .await
        .unwrap();
    let connected = eventually(Duration::from_secs(30), "the page connects", || async {
        let page = page(&browser).await?;
        match page["status"] == "connected" {
            true => Ok(page),
            false => Err(described(&page, &author_token)),
        }
    })
    .await;
    let href = connected["href"].as_str().unwrap_or_default();
    assert!(
        !href.contains(&author_token),
        "the page kept the token in its address: {}",
        described(&connected, &author_token)
    );

    let body = format!(
        "Seen in Chromium {}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let response = app
        .send(
            Method::POST,
            &format!("/api/posts/{post}/comments"),
            &reader_token,
            json!({"body": body}),
        )
        .await;
    assert_eq!(response.status(), 201);

    eventually(
        Duration::from_secs(15),
        "the page lists the reader's comment",
        || async {
            let page = page(&browser).await?;
            let listed = page["comments"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .any(|text| text.contains(&body) && text.contains("Rita Reader"))
            });
            match listed {
                true => Ok(()),
                false => Err(described(&page, &author_token)),
            }
        },
    )
    .await;

    drop(browser);
    relay.stop().await;
    app.stop().await;
}
