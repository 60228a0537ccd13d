//! The sandbox's token endpoint: strict rotation of refresh tokens, lost answers, the replay of a repeated
//! `Idempotency-Key` where the settings ask for it, and authorization codes (minted by the admin for a user,
//! good once, for `CODE_LIFETIME`).

use chrono::TimeDelta;
use rand::Rng;
use serde_json::{Value, json};

use super::{RefreshRec, State};

/// The answer of a token request.
pub enum TokenAnswer {
    Issued(Value),
    /// Rotation applied, its answer (kept for a repeated `Idempotency-Key`) to be lost.
    Lost(Value),
    InvalidGrant(&'static str),
    /// The `Idempotency-Key` was used with another request.
    KeyReused,
}

/// How long a minted authorization code works (Astra's live "a few minutes").
pub const CODE_LIFETIME: TimeDelta = TimeDelta::minutes(5);

impl State {
    /// Mints an authorization code for `user_id`, as Astra's authorization page does when the user consents;
    /// `None` for a user the sandbox does not know.
    pub fn mint_code(&mut self, user_id: &str) -> Option<String> {
        self.users.contains_key(user_id).then_some(())?;
        let code = self.token("code");
        let expires = self.now() + CODE_LIFETIME;
        self.codes.insert(code.clone(), (user_id.to_string(), expires));
        Some(code)
    }

    /// `grant_type=authorization_code`: a known, unexpired code issues a fresh pair for its user (replacing the
    /// user's previous grant) and is gone; anything else is `invalid_grant`.
    pub fn exchange_code(&mut self, code: &str, redirect_uri: Option<&str>) -> TokenAnswer {
        if let (Some(expected), Some(given)) = (&self.settings.redirect_uri, redirect_uri)
            && expected != given
        {
            return TokenAnswer::InvalidGrant("redirect_uri does not match");
        }
        let Some((user_id, expires)) = self.codes.remove(code) else {
            return TokenAnswer::InvalidGrant("authorization code unknown or already used");
        };
        let now = self.now();
        if expires <= now {
            return TokenAnswer::InvalidGrant("authorization code expired");
        }
        let g = self.issue_grant(&user_id, now);
        TokenAnswer::Issued(json!({
            "access_token": g.access_token,
            "refresh_token": g.refresh_token,
            "expires_in": self.settings.access_ttl_secs,
            "token_type": "Bearer",
        }))
    }

    /// Whose grant a live refresh token belongs to.
    pub fn user_of_refresh_token(&self, refresh_token: &str) -> Option<String> {
        self.refresh_index.get(refresh_token).map(|r| r.user_id.clone())
    }

    /// `grant_type=refresh_token`: strict rotation by default (the old refresh token dies, the new one lives
    /// ten days, one live access token per grant). With `honor_idempotency_key`, a request repeating an
    /// `Idempotency-Key` with the same refresh token gets the answer the first one was issued (even if lost);
    /// with another refresh token, 422.
    pub fn refresh(&mut self, refresh_token: &str, redirect_uri: Option<&str>, key: Option<&str>) -> TokenAnswer {
        let key = key.filter(|_| self.settings.honor_idempotency_key);
        match key.and_then(|k| self.idempotent_answers.get(k)) {
            Some((rt, v)) if rt == refresh_token => return TokenAnswer::Issued(v.clone()),
            Some(_) => return TokenAnswer::KeyReused,
            None => {}
        }
        let answer = self.refresh_once(refresh_token, redirect_uri);
        if let (Some(k), TokenAnswer::Issued(v) | TokenAnswer::Lost(v)) = (key, &answer) {
            self.idempotent_answers.insert(k.to_string(), (refresh_token.to_string(), v.clone()));
        }
        answer
    }

    fn refresh_once(&mut self, refresh_token: &str, redirect_uri: Option<&str>) -> TokenAnswer {
        let now = self.now();
        if let (Some(expected), Some(given)) = (&self.settings.redirect_uri, redirect_uri)
            && expected != given
        {
            return TokenAnswer::InvalidGrant("redirect_uri does not match");
        }
        let Some(rec) = self.refresh_index.get(refresh_token).cloned() else {
            return TokenAnswer::InvalidGrant("refresh token unknown, revoked or already rotated");
        };
        if rec.expires <= now {
            return TokenAnswer::InvalidGrant("refresh token expired");
        }
        let new_refresh = self.token("rt");
        let new_access = self.token("at");
        let strict = self.settings.strict_rotation;
        let fresh_life = self.settings.fresh_refresh_lifetime;
        let access_ttl = self.settings.access_ttl_secs;
        let Some(g) = self.grants.get_mut(&rec.user_id) else {
            return TokenAnswer::InvalidGrant("grant unknown");
        };
        if strict {
            self.refresh_index.remove(refresh_token);
        }
        self.access_index.remove(&g.access_token);
        g.refresh_token = new_refresh.clone();
        g.refresh_expires = if fresh_life { now + crate::astra::REFRESH_TOKEN_LIFETIME } else { rec.expires };
        g.access_token = new_access.clone();
        g.access_expires = now + TimeDelta::seconds(access_ttl);
        g.refreshes += 1;
        let expires = g.refresh_expires;
        self.refresh_index.insert(new_refresh.clone(), RefreshRec { user_id: rec.user_id.clone(), expires });
        self.access_index.insert(new_access.clone(), rec.user_id.clone());
        let lost = self.settings.faults.lost_refresh_rate > 0.0
            && self.rng.random_bool(self.settings.faults.lost_refresh_rate.min(1.0));
        let answer = json!({
            "access_token": new_access,
            "refresh_token": new_refresh,
            "expires_in": access_ttl,
            "token_type": "Bearer",
        });
        if lost { TokenAnswer::Lost(answer) } else { TokenAnswer::Issued(answer) }
    }
}
