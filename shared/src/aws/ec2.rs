//! EC2 over the Query protocol: its endpoint and version, and readers for the parts of its answers
//! the services use (instances, their tags and times).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::credentials::CredentialChain;
use super::query::{Params, QueryClient, QueryError};
use super::xml::Element;

/// The EC2 API version every call names.
pub const VERSION: &str = "2016-11-15";

/// A client of EC2 in `region`, at `endpoint_url` if given (moto in tests), else the region's own.
pub fn client(
    endpoint_url: &str,
    region: &str,
    credentials: Arc<CredentialChain>,
    max_attempts: u32,
) -> QueryClient {
    let endpoint = if endpoint_url.is_empty() {
        format!("https://ec2.{region}.amazonaws.com/")
    } else {
        endpoint_url.to_string()
    };
    QueryClient::new(&endpoint, region, "ec2", VERSION, credentials, max_attempts)
}

/// The instances of a `DescribeInstances` (or `RunInstances`) answer, over its reservations.
pub fn instances(answer: &Element) -> impl Iterator<Item = &Element> {
    let reserved = answer
        .items(&["reservationSet"])
        .flat_map(|reservation| reservation.items(&["instancesSet"]));
    reserved.chain(answer.items(&["instancesSet"]))
}

/// Every page of a `DescribeInstances` with `params`.
pub async fn describe_instances(
    client: &QueryClient,
    params: Params,
) -> Result<Vec<Element>, QueryError> {
    let mut pages = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let page = client
            .call(
                "DescribeInstances",
                &params.clone().set_some("NextToken", next_token.take()),
            )
            .await?;
        next_token = page.text_at(&["nextToken"]).map(str::to_string);
        pages.push(page);
        if next_token.is_none() {
            return Ok(pages);
        }
    }
}

/// A time as EC2 writes it (`2026-12-06T20:00:00.000Z`).
pub fn time(element: &Element, name: &str) -> Option<DateTime<Utc>> {
    let text = element.text_at(&[name])?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_read_from_reservations_and_from_a_launchs_answer() {
        let described = super::super::xml::parse(
            "<R><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId>\
             <launchTime>2026-12-06T20:00:01.000Z</launchTime></item></instancesSet></item>\
             </reservationSet></R>",
        )
        .unwrap();
        let found: Vec<&Element> = instances(&described).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(
            time(found[0], "launchTime").unwrap().to_rfc3339(),
            "2026-12-06T20:00:01+00:00"
        );
        let launched = super::super::xml::parse(
            "<RunInstancesResponse><instancesSet><item><instanceId>i-2</instanceId></item>\
             </instancesSet></RunInstancesResponse>",
        )
        .unwrap();
        assert_eq!(instances(&launched).count(), 1);
    }
}
