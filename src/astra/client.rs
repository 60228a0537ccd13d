//! Astra's endpoints the worker calls, as typed methods of [`AstraClient`].

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::{
    Call, Credentials, RequestLimiter,
    error::AstraError,
    model::{self, Card, TokenPair, Transfer, TransferPage, User},
    record::CallLog,
    transport::path_segment,
};
use crate::{config::AstraSettings, store::Store};

#[derive(Clone)]
pub struct AstraClient {
    pub(super) http: reqwest::Client,
    pub(super) base: Url,
    pub(super) credentials: Credentials,
    pub(super) redirect_uri: String,
    pub(super) limiter: Arc<RequestLimiter>,
    /// The call log (`api_call`), when the client has a store.
    pub(super) calls: Option<Arc<CallLog>>,
    pub(super) max_retries: u32,
    pub(super) retry_budget: Duration,
}

impl std::fmt::Debug for AstraClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AstraClient({})", self.base)
    }
}

impl AstraClient {
    pub fn new(
        settings: &AstraSettings,
        credentials: Credentials,
        limiter: Arc<RequestLimiter>,
        store: Option<Store>,
    ) -> anyhow::Result<AstraClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            // A redirect is answered, not followed: followed, a POST turns into a GET without its body, or (307,
            // 308) sends a refresh token's body to whatever host the `Location` names.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("astra-worker/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(AstraClient {
            http,
            base: settings.base_url.clone(),
            credentials,
            redirect_uri: settings.redirect_uri.clone(),
            limiter,
            calls: store.map(CallLog::new),
            max_retries: settings.max_retries,
            retry_budget: settings.retry_budget,
        })
    }

    /// Waits until every call made so far is in the call log (`api_call`), which is written in the background.
    pub async fn flush_calls(&self) {
        if let Some(log) = &self.calls {
            log.flush().await;
        }
    }

    /// `POST /v1/oauth/token` with `grant_type=refresh_token`: a new pair; the old tokens die. `intent` (the
    /// refresh intent's id) goes as `Idempotency-Key`, the same on every retry and on a later probe of the same
    /// intent, so an Astra that honours it answers a repeated request with the pair it already issued.
    pub async fn refresh(
        &self,
        call: Call<'_>,
        refresh_token: &SecretString,
        intent: &str,
    ) -> Result<TokenPair, AstraError> {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose_secret()),
            ("redirect_uri", self.redirect_uri.as_str()),
        ];
        self.token_request(call, &form, intent).await
    }

    /// `POST /v1/oauth/token` with `grant_type=authorization_code`: the pair a user's consent issued. A code
    /// works once; `idempotency_key` is the same on every retry, so an Astra that honours it answers a retry of a
    /// lost answer with the same pair.
    pub async fn exchange_code(
        &self,
        call: Call<'_>,
        code: &SecretString,
        idempotency_key: &str,
    ) -> Result<TokenPair, AstraError> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.expose_secret()),
            ("redirect_uri", self.redirect_uri.as_str()),
        ];
        self.token_request(call, &form, idempotency_key).await
    }

    async fn token_request(
        &self,
        call: Call<'_>,
        form: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<TokenPair, AstraError> {
        let c = &self.credentials;
        self.send(call, Method::POST, "/v1/oauth/token", true, |r| {
            r.basic_auth(c.client_id.expose_secret(), Some(c.client_secret.expose_secret()))
                .header("Idempotency-Key", idempotency_key)
                .form(form)
        })
        .await
    }

    /// `GET /v1/user`: the user the access token belongs to.
    pub async fn user(&self, call: Call<'_>, access: &SecretString) -> Result<User, AstraError> {
        self.get(call, "/v1/user", access, &[]).await
    }

    /// One page of `GET /v1/transfers`, newest first.
    pub async fn transfers_page(
        &self,
        call: Call<'_>,
        access: &SecretString,
        limit: u32,
        offset: u64,
    ) -> Result<TransferPage, AstraError> {
        let q = [("limit", limit.to_string()), ("offset", offset.to_string())];
        self.get(call, "/v1/transfers", access, &q).await
    }

    /// The user's transfers initiated at or after `since`, newest first. Paging stops on an item older than
    /// the window, a short page, or a page that brings no new id — never on `count`, which Astra's spec words
    /// as the page's size. A full page of repeated items, or reaching `max_pages`, marks the listing truncated
    /// (incomplete): the caller fails closed. An item listed
    /// twice is kept once; items that do not parse are returned as rejected.
    pub async fn transfers_since(
        &self,
        call: Call<'_>,
        access: &SecretString,
        since: DateTime<Utc>,
        page_size: u32,
        max_pages: u32,
    ) -> Result<model::Listing, AstraError> {
        let mut out = model::Listing::default();
        let mut seen = HashSet::new();
        let mut offset = 0u64;
        for _ in 0..max_pages {
            let page = self.transfers_page(call, access, page_size, offset).await?;
            let n = page.transfers.len();
            let mut new_items = 0;
            let mut reached_window_end = false;
            for item in page.transfers {
                if let Some(id) = item.get("id").and_then(|i| i.as_str())
                    && !seen.insert(id.to_string())
                {
                    continue;
                }
                new_items += 1;
                // The rest of the page is still read: an item out of order after an older one is not dropped.
                match model::parse_transfer(item) {
                    Ok(t) if t.initiated < since => reached_window_end = true,
                    Ok(t) => out.transfers.push(t),
                    Err(r) => out.rejected.push(r),
                }
            }
            offset += n as u64;
            if new_items == 0 && n >= page_size as usize {
                // A full page of items already seen: Astra's paging went wrong, and what lies behind it is unread.
                warn!(
                    user_id = call.user_id,
                    offset, "a full page repeated items already listed: the listing is incomplete"
                );
                out.truncated = true;
                return Ok(out);
            }
            if reached_window_end || n < page_size as usize || new_items == 0 {
                return Ok(out);
            }
        }
        warn!(
            user_id = call.user_id,
            max_pages, "stopped listing transfers at the page cap: the listing is incomplete"
        );
        out.truncated = true;
        Ok(out)
    }

    /// `GET /v1/cards`.
    pub async fn cards(&self, call: Call<'_>, access: &SecretString) -> Result<Vec<Card>, AstraError> {
        let list: model::CardList = self.get(call, "/v1/cards", access, &[]).await?;
        Ok(list.cards)
    }

    /// `GET /v1/cards/{id}`.
    pub async fn card(&self, call: Call<'_>, access: &SecretString, id: &str) -> Result<Card, AstraError> {
        self.get(call, &format!("/v1/cards/{}", path_segment(id)), access, &[]).await
    }

    /// `GET /v1/transfers/{id}`.
    pub async fn transfer(&self, call: Call<'_>, access: &SecretString, id: &str) -> Result<Transfer, AstraError> {
        self.get(call, &format!("/v1/transfers/{}", path_segment(id)), access, &[]).await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        call: Call<'_>,
        path: &str,
        access: &SecretString,
        query: &[(&str, String)],
    ) -> Result<T, AstraError> {
        self.send(call, Method::GET, path, false, |r| r.bearer_auth(access.expose_secret()).query(query)).await
    }
}
