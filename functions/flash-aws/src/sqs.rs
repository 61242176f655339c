//! The orders queue.

use aws_sdk_sqs::Client;
use flash_domain::ports::{PortError, PortResult, Queue};
use flash_domain::OrderMessage;

#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    pub fn from_config(sdk: &aws_config::SdkConfig, url: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), url)
    }
}

impl Queue for SqsQueue {
    async fn send(&self, msg: &OrderMessage) -> PortResult<()> {
        let body = serde_json::to_string(msg).map_err(|e| PortError::unavailable("encoding", e))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| crate::errors::port_error("sqs SendMessage", e))?;
        Ok(())
    }
}
