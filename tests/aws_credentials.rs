//! The credential chain against real HTTP services played by the test: the instance metadata
//! service (IMDSv2), a container credentials endpoint and STS's `AssumeRoleWithWebIdentity`; and an
//! EC2 call signed with what the chain found, as the endpoint receives it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use spot_shared::aws::credentials::{CredentialChain, Environment, Source};
use spot_shared::aws::{ec2, Params};

/// What the fake services saw: requests by path, and the last EC2 call's headers.
#[derive(Default)]
struct Seen {
    hits: HashMap<String, usize>,
    ec2_headers: HashMap<String, String>,
    /// How long the role's keys are valid for, from now (minutes).
    valid_minutes: i64,
}

fn role_json(key: &str, valid_minutes: i64) -> serde_json::Value {
    let expiration = chrono::Utc::now() + chrono::Duration::minutes(valid_minutes);
    serde_json::json!({
        "Code": "Success",
        "AccessKeyId": key,
        "SecretAccessKey": "role-secret",
        "Token": format!("{key}-token"),
        "Expiration": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

async fn record(request: &HttpRequest, seen: &Mutex<Seen>) -> i64 {
    let mut seen = seen.lock().unwrap();
    *seen.hits.entry(request.path().to_string()).or_default() += 1;
    seen.valid_minutes
}

/// Serves the three credential services and an EC2 endpoint; returns its base URL.
fn serve(seen: Arc<Mutex<Seen>>) -> (actix_web::dev::ServerHandle, String) {
    let seen = web::Data::from(seen);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(seen.clone())
            .route(
                "/latest/api/token",
                web::put().to(|request: HttpRequest, seen: web::Data<Mutex<Seen>>| async move {
                    record(&request, &seen).await;
                    let ttl = request.headers().get("X-aws-ec2-metadata-token-ttl-seconds");
                    match ttl {
                        Some(_) => HttpResponse::Ok().body("imds-token"),
                        None => HttpResponse::BadRequest().finish(),
                    }
                }),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role:.*}",
                web::get().to(
                    |request: HttpRequest,
                     role: web::Path<String>,
                     seen: web::Data<Mutex<Seen>>| async move {
                        let valid = record(&request, &seen).await;
                        let token = request.headers().get("X-aws-ec2-metadata-token");
                        if token.is_none_or(|t| t != "imds-token") {
                            return HttpResponse::Unauthorized().finish();
                        }
                        match role.as_str() {
                            "" => HttpResponse::Ok().body("spot-instance-role\n"),
                            "spot-instance-role" => {
                                HttpResponse::Ok().json(role_json("ASIAINSTANCE", valid))
                            }
                            _ => HttpResponse::NotFound().finish(),
                        }
                    },
                ),
            )
            .route(
                "/container-credentials",
                web::get().to(|request: HttpRequest, seen: web::Data<Mutex<Seen>>| async move {
                    let valid = record(&request, &seen).await;
                    match request.headers().get("Authorization") {
                        Some(token) if token == "container-token" => {
                            HttpResponse::Ok().json(role_json("ASIACONTAINER", valid))
                        }
                        _ => HttpResponse::Forbidden().finish(),
                    }
                }),
            )
            .route(
                "/sts/",
                web::post().to(
                    |request: HttpRequest,
                     form: web::Form<HashMap<String, String>>,
                     seen: web::Data<Mutex<Seen>>| async move {
                        record(&request, &seen).await;
                        let right = form.get("Action").map(String::as_str)
                            == Some("AssumeRoleWithWebIdentity")
                            && form.get("WebIdentityToken").map(String::as_str) == Some("jwt-of-the-pod")
                            && form.get("RoleArn").map(String::as_str)
                                == Some("arn:aws:iam::123456789012:role/spot");
                        if !right {
                            return HttpResponse::BadRequest().content_type("text/xml").body(
                                "<ErrorResponse><Error><Code>InvalidIdentityToken</Code>\
                                 <Message>no</Message></Error></ErrorResponse>",
                            );
                        }
                        HttpResponse::Ok().content_type("text/xml").body(
                            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult>\
                             <Credentials><AccessKeyId>ASIAWEB</AccessKeyId>\
                             <SecretAccessKey>web-secret</SecretAccessKey>\
                             <SessionToken>web-token</SessionToken>\
                             <Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
                             </AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
                        )
                    },
                ),
            )
            .route(
                "/ec2/",
                web::post().to(|request: HttpRequest, seen: web::Data<Mutex<Seen>>| async move {
                    record(&request, &seen).await;
                    let headers = request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    seen.lock().unwrap().ec2_headers = headers;
                    HttpResponse::Ok().content_type("text/xml").body(
                        "<DescribeInstancesResponse><reservationSet/></DescribeInstancesResponse>",
                    )
                }),
            )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("the fake services bind");
    let url = format!("http://127.0.0.1:{}", server.addrs()[0].port());
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (handle, url)
}

fn hits(seen: &Mutex<Seen>, path: &str) -> usize {
    seen.lock().unwrap().hits.get(path).copied().unwrap_or(0)
}

#[tokio::test]
async fn the_instance_role_signs_calls_and_is_fetched_again_only_near_its_expiry() {
    let seen = Arc::new(Mutex::new(Seen {
        valid_minutes: 60,
        ..Seen::default()
    }));
    let (server, url) = serve(seen.clone());
    // Nothing in the environment: the chain falls through to the metadata service.
    let chain = Arc::new(CredentialChain::new(
        &Source::STANDARD,
        Environment::from_pairs([("HOME", "/nonexistent")]),
        "us-east-1",
        &url,
    ));
    let client = ec2::client(&format!("{url}/ec2/"), "us-east-1", chain.clone(), 1);
    ec2::describe_instances(&client, Params::new())
        .await
        .unwrap();
    let headers = seen.lock().unwrap().ec2_headers.clone();
    let authorization = &headers["authorization"];
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=ASIAINSTANCE/"),
        "{authorization}"
    );
    assert!(authorization.contains("/us-east-1/ec2/aws4_request"));
    assert_eq!(headers["x-amz-security-token"], "ASIAINSTANCE-token");

    // Kept while fresh: a second call asks the metadata service nothing.
    client
        .call("DescribeInstances", &Params::new())
        .await
        .unwrap();
    let role_path = "/latest/meta-data/iam/security-credentials/spot-instance-role";
    assert_eq!(hits(&seen, role_path), 1);
    assert_eq!(hits(&seen, "/ec2/"), 2);

    // Keys within five minutes of their expiry are fetched again before the next call.
    seen.lock().unwrap().valid_minutes = 3;
    let near_expiry = CredentialChain::new(
        &[Source::InstanceMetadata],
        Environment::default(),
        "us-east-1",
        &url,
    );
    near_expiry.get().await.unwrap();
    near_expiry.get().await.unwrap();
    assert_eq!(hits(&seen, role_path), 3);
    server.stop(false).await;
}

#[tokio::test]
async fn container_and_web_identity_roles_are_found_and_a_missing_metadata_service_is_no_error() {
    let seen = Arc::new(Mutex::new(Seen {
        valid_minutes: 60,
        ..Seen::default()
    }));
    let (server, url) = serve(seen.clone());
    let container_url = format!("{url}/container-credentials");
    let container = CredentialChain::new(
        &Source::STANDARD,
        Environment::from_pairs([
            ("HOME", "/nonexistent"),
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", container_url.as_str()),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "container-token"),
        ]),
        "us-east-1",
        &url,
    );
    let found = container.get().await.unwrap();
    assert_eq!(
        (found.access_key_id.as_str(), found.source),
        ("ASIACONTAINER", "container role")
    );

    let token_file = std::env::temp_dir().join(format!("spot-web-identity-{}", std::process::id()));
    std::fs::write(&token_file, "jwt-of-the-pod\n").unwrap();
    let sts_url = format!("{url}/sts/");
    let web = CredentialChain::new(
        &Source::STANDARD,
        Environment::from_pairs([
            ("HOME", "/nonexistent"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/spot"),
            ("AWS_ENDPOINT_URL_STS", sts_url.as_str()),
        ]),
        "us-east-1",
        &url,
    );
    let found = web.get().await.unwrap();
    assert_eq!(
        (found.access_key_id.as_str(), found.source),
        ("ASIAWEB", "web identity")
    );
    let wrong_role = CredentialChain::new(
        &Source::STANDARD,
        Environment::from_pairs([
            ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/other"),
            ("AWS_ENDPOINT_URL_STS", sts_url.as_str()),
        ]),
        "us-east-1",
        &url,
    );
    let refused = wrong_role.get().await.unwrap_err().to_string();
    assert!(refused.contains("InvalidIdentityToken"), "{refused}");
    std::fs::remove_file(token_file).unwrap();

    // No metadata service at all (a closed port): the chain says where it looked, promptly.
    server.stop(false).await;
    let nowhere = CredentialChain::new(
        &Source::STANDARD,
        Environment::from_pairs([("HOME", "/nonexistent")]),
        "us-east-1",
        &url,
    );
    let started = std::time::Instant::now();
    let error = nowhere.get().await.unwrap_err().to_string();
    assert!(
        error.contains("InstanceMetadata (no metadata service"),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
