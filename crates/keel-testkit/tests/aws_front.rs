//! `AwsFront`: SSM command execution, forwarding to a real moto, the AWS
//! error shapes of injected faults, lost responses that still take effect,
//! and call counts. Requests are plain reqwest calls carrying a SigV4-shaped
//! `Authorization` header (moto checks no signature), so these tests do not
//! build the AWS SDK. The tests that forward need `moto_server` (see
//! `keel_testkit::services::MOTO_INSTALL`); the others forward to a plain
//! fake server.

use std::time::Duration;

use axum::Router;
use keel_testkit::fakes::aws::{
    AwsFault, AwsFaults, AwsFront, CommandResult, CommandStatus, Lost, SsmInvocation,
};
use keel_testkit::{FakeServer, Moto};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::time::Instant;

const SEED: u64 = 42;

fn authorization(service: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261207/us-east-1/{service}/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date, Signature=0000"
    )
}

/// An AWS JSON call (`X-Amz-Target: <prefix>.<op>`).
struct JsonAnswer {
    status: StatusCode,
    error_type: Option<String>,
    body: Value,
}

async fn json_call(
    client: &reqwest::Client,
    front: &AwsFront,
    service: &str,
    target: &str,
    body: &Value,
) -> reqwest::Result<JsonAnswer> {
    let content_type = if service == "dynamodb" {
        "application/x-amz-json-1.0"
    } else {
        "application/x-amz-json-1.1"
    };
    let response = client
        .post(front.url())
        .header("authorization", authorization(service))
        .header("x-amz-target", target)
        .header("x-amz-date", "20261207T000000Z")
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status();
    let error_type = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(JsonAnswer {
        status,
        error_type,
        body,
    })
}

async fn ssm(
    client: &reqwest::Client,
    front: &AwsFront,
    op: &str,
    body: Value,
) -> reqwest::Result<JsonAnswer> {
    json_call(client, front, "ssm", &format!("AmazonSSM.{op}"), &body).await
}

async fn dynamodb(
    client: &reqwest::Client,
    front: &AwsFront,
    op: &str,
    body: Value,
) -> reqwest::Result<JsonAnswer> {
    json_call(
        client,
        front,
        "dynamodb",
        &format!("DynamoDB_20120810.{op}"),
        &body,
    )
    .await
}

/// An EC2 query call; returns (status, body).
async fn ec2(
    client: &reqwest::Client,
    front: &AwsFront,
    form: &str,
) -> reqwest::Result<(StatusCode, String)> {
    let response = client
        .post(front.url())
        .header("authorization", authorization("ec2"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(format!("{form}&Version=2016-11-15"))
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

/// A front whose forwarded calls reach a fake that answers 404 to
/// everything: for tests where nothing should reach moto.
async fn front_without_moto(seed: u64) -> (FakeServer, AwsFront) {
    let upstream = FakeServer::start(Router::new()).await;
    let front = AwsFront::start(&upstream.base_url(), seed).await.unwrap();
    (upstream, front)
}

fn send_command_body(instances: &[&str], commands: &[&str]) -> Value {
    json!({
        "InstanceIds": instances,
        "DocumentName": "AWS-RunShellScript",
        "Parameters": { "commands": commands },
        "TimeoutSeconds": 600,
        "Comment": "install k3s",
    })
}

#[tokio::test]
async fn ssm_commands_go_pending_then_in_progress_then_report_the_handler_result()
-> anyhow::Result<()> {
    let (_upstream, front) = front_without_moto(SEED).await;
    let latency = Duration::from_millis(1_200);
    front.set_command_handler(move |cmd: &SsmInvocation| {
        if cmd.instance_id == "i-bad" {
            CommandResult::failed(2, "k3s: not found\n").after(latency)
        } else {
            CommandResult::success(format!("hello from {}\n", cmd.instance_id)).after(latency)
        }
    });
    let client = reqwest::Client::new();
    let sent_at = Instant::now();
    let sent = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(
            &["i-good", "i-bad"],
            &["set -e", "curl -sfL https://get.k3s.io | sh -"],
        ),
    )
    .await?;
    assert_eq!(sent.status, StatusCode::OK, "{}", sent.body);
    let command = &sent.body["Command"];
    let command_id = command["CommandId"].as_str().unwrap().to_owned();
    assert_eq!(command_id.len(), 36, "a UUID: {command_id}");
    assert_eq!(command["Status"], "Pending");
    assert_eq!(command["DocumentName"], "AWS-RunShellScript");
    assert_eq!(command["InstanceIds"], json!(["i-good", "i-bad"]));
    assert_eq!(command["Parameters"]["commands"][0], "set -e");
    assert_eq!(command["Comment"], "install k3s");
    assert!(command["RequestedDateTime"].as_f64().unwrap() > 1.7e9);

    let get = |instance: &'static str| {
        let (client, front, command_id) = (&client, &front, command_id.clone());
        async move {
            ssm(
                client,
                front,
                "GetCommandInvocation",
                json!({ "CommandId": command_id, "InstanceId": instance }),
            )
            .await
        }
    };
    let pending = get("i-good").await?;
    assert_eq!(pending.status, StatusCode::OK);
    assert_eq!(pending.body["Status"], "Pending", "{}", pending.body);
    assert_eq!(pending.body["StatusDetails"], "Pending");
    assert_eq!(pending.body["ResponseCode"], -1);
    assert_eq!(pending.body["StandardOutputContent"], "");

    tokio::time::sleep_until(sent_at + Duration::from_millis(800)).await;
    let running = get("i-good").await?;
    assert_eq!(running.body["Status"], "InProgress", "{}", running.body);
    assert_eq!(running.body["StatusDetails"], "InProgress");
    assert_eq!(running.body["ResponseCode"], -1);
    assert_ne!(running.body["ExecutionStartDateTime"], "");
    assert_eq!(running.body["ExecutionEndDateTime"], "");

    tokio::time::sleep_until(sent_at + latency + Duration::from_millis(50)).await;
    let done = get("i-good").await?;
    let body = &done.body;
    assert_eq!(body["Status"], "Success", "{body}");
    assert_eq!(body["StatusDetails"], "Success");
    assert_eq!(body["ResponseCode"], 0);
    assert_eq!(body["StandardOutputContent"], "hello from i-good\n");
    assert_eq!(body["StandardErrorContent"], "");
    assert_eq!(body["CommandId"], command_id.as_str());
    assert_eq!(body["InstanceId"], "i-good");
    assert_eq!(body["DocumentName"], "AWS-RunShellScript");
    assert_eq!(body["PluginName"], "aws:runShellScript");
    assert_eq!(body["Comment"], "install k3s");
    let end = body["ExecutionEndDateTime"].as_str().unwrap();
    assert!(end.ends_with('Z') && end.len() == 24, "{end}");

    let failed = get("i-bad").await?;
    assert_eq!(failed.body["Status"], "Failed", "{}", failed.body);
    assert_eq!(failed.body["ResponseCode"], 2);
    assert_eq!(failed.body["StandardErrorContent"], "k3s: not found\n");

    let invocations = front.invocations();
    assert_eq!(
        invocations
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect::<Vec<_>>(),
        ["i-good", "i-bad"],
        "in send order"
    );
    assert!(invocations.iter().all(|i| i.command_id == command_id
        && i.document_name == "AWS-RunShellScript"
        && i.comment == "install k3s"
        && i.commands[1].contains("get.k3s.io")));
    assert_eq!(front.calls("ssm", Some("SendCommand")), 1);
    assert_eq!(front.calls("ssm", Some("GetCommandInvocation")), 4);
    assert_eq!(front.calls_forwarded("ssm", None), 0, "served by the front");
    Ok(())
}

#[tokio::test]
async fn the_default_handler_succeeds_after_the_configured_latency() -> anyhow::Result<()> {
    let (_upstream, front) = front_without_moto(SEED).await;
    front.set_command_latency(Duration::from_millis(300));
    let client = reqwest::Client::new();
    let sent = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["true"]),
    )
    .await?;
    let id = sent.body["Command"]["CommandId"]
        .as_str()
        .unwrap()
        .to_owned();
    let query = json!({ "CommandId": id, "InstanceId": "i-1" });
    let early = ssm(&client, &front, "GetCommandInvocation", query.clone()).await?;
    assert_ne!(early.body["Status"], "Success", "{}", early.body);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let done = ssm(&client, &front, "GetCommandInvocation", query).await?;
    assert_eq!(done.body["Status"], "Success", "{}", done.body);
    assert_eq!(done.body["StandardOutputContent"], "");
    assert_eq!(done.body["ResponseCode"], 0);

    front.set_command_handler(|_| CommandResult::timed_out());
    let sent = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["sleep 1h"]),
    )
    .await?;
    let id = sent.body["Command"]["CommandId"]
        .as_str()
        .unwrap()
        .to_owned();
    let timed_out = ssm(
        &client,
        &front,
        "GetCommandInvocation",
        json!({ "CommandId": id, "InstanceId": "i-1" }),
    )
    .await?;
    assert_eq!(timed_out.body["Status"], CommandStatus::TimedOut.as_str());
    assert_eq!(timed_out.body["StatusDetails"], "ExecutionTimedOut");
    Ok(())
}

#[tokio::test]
async fn unknown_commands_and_instances_get_the_real_ssm_errors() -> anyhow::Result<()> {
    let (_upstream, front) = front_without_moto(SEED).await;
    let client = reqwest::Client::new();
    let unknown = ssm(
        &client,
        &front,
        "GetCommandInvocation",
        json!({ "CommandId": "00000000-0000-4000-8000-000000000000", "InstanceId": "i-1" }),
    )
    .await?;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["__type"], "InvalidCommandId");
    assert_eq!(unknown.error_type.as_deref(), Some("InvalidCommandId"));
    assert!(unknown.body["message"].is_string());

    front.set_invocation_delay(Duration::from_millis(300));
    let sent = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["true"]),
    )
    .await?;
    let sent_at = Instant::now();
    let id = sent.body["Command"]["CommandId"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = ssm(
        &client,
        &front,
        "GetCommandInvocation",
        json!({ "CommandId": id, "InstanceId": "i-other" }),
    )
    .await?;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    assert_eq!(other.body["__type"], "InvocationDoesNotExist");

    let query = json!({ "CommandId": id, "InstanceId": "i-1" });
    let too_early = ssm(&client, &front, "GetCommandInvocation", query.clone()).await?;
    assert_eq!(
        too_early.body["__type"], "InvocationDoesNotExist",
        "as real SSM, briefly"
    );
    tokio::time::sleep_until(sent_at + Duration::from_millis(350)).await;
    let visible = ssm(&client, &front, "GetCommandInvocation", query).await?;
    assert_eq!(visible.body["Status"], "Success", "{}", visible.body);

    let no_instances = ssm(
        &client,
        &front,
        "SendCommand",
        json!({ "DocumentName": "AWS-RunShellScript", "Targets": [{"Key": "tag:role", "Values": ["k3s"]}] }),
    )
    .await?;
    assert_eq!(no_instances.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_instances.body["__type"], "InvalidParameters");
    Ok(())
}

#[tokio::test]
async fn a_lost_send_command_still_runs_the_script() -> anyhow::Result<()> {
    let (_upstream, front) = front_without_moto(SEED).await;
    let client = reqwest::Client::new();
    front.push_next(
        "ssm",
        Some("SendCommand"),
        AwsFault::LostResponse(Lost::Close),
    );
    let lost = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["echo once"]),
    )
    .await;
    assert!(lost.is_err(), "the connection closes unanswered");
    assert_eq!(front.invocations().len(), 1, "but the command was accepted");
    let retried = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["echo once"]),
    )
    .await?;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(
        front.invocations().len(),
        2,
        "a blind retry runs the script twice: SendCommand is not idempotent"
    );
    Ok(())
}

#[tokio::test]
async fn ssm_parameters_ec2_and_s3_are_forwarded_to_moto_unchanged() -> anyhow::Result<()> {
    let moto = Moto::start().await;
    let front = AwsFront::start(moto.url(), SEED).await?;
    let client = reqwest::Client::new();

    let put = ssm(
        &client,
        &front,
        "PutParameter",
        json!({ "Name": "/goman/k3s-token", "Value": "s3cr3t", "Type": "SecureString" }),
    )
    .await?;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["Version"], 1);
    let get = ssm(
        &client,
        &front,
        "GetParameter",
        json!({ "Name": "/goman/k3s-token", "WithDecryption": true }),
    )
    .await?;
    assert_eq!(get.body["Parameter"]["Value"], "s3cr3t", "{}", get.body);
    let missing = ssm(&client, &front, "GetParameter", json!({ "Name": "/nope" })).await?;
    assert_eq!(
        missing.status,
        StatusCode::BAD_REQUEST,
        "moto's error, unchanged"
    );
    assert_eq!(missing.body["__type"], "ParameterNotFound");
    assert_eq!(missing.error_type.as_deref(), Some("ParameterNotFound"));

    let (status, body) = ec2(&client, &front, "Action=DescribeInstances").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("<DescribeInstancesResponse"), "{body}");
    let (status, body) = ec2(&client, &front, "Action=CreateVpc&CidrBlock=10.0.0.0%2F16").await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("<vpcId>vpc-"), "{body}");

    let s3 = |method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{}{path}", front.url()))
            .header("authorization", authorization("s3"))
            .header("x-amz-content-sha256", "UNSIGNED-PAYLOAD")
    };
    assert!(
        s3(reqwest::Method::PUT, "/goman-state")
            .send()
            .await?
            .status()
            .is_success()
    );
    let put = s3(reqwest::Method::PUT, "/goman-state/clusters/a.json")
        .body(r#"{"generation":1}"#)
        .send()
        .await?;
    assert!(put.status().is_success(), "{}", put.status());
    let head = s3(reqwest::Method::HEAD, "/goman-state/clusters/a.json")
        .send()
        .await?;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        r#"{"generation":1}"#.len().to_string().as_str(),
        "HEAD keeps moto's Content-Length"
    );
    assert!(head.headers().contains_key("etag"));
    let got = s3(reqwest::Method::GET, "/goman-state/clusters/a.json")
        .send()
        .await?;
    assert_eq!(got.text().await?, r#"{"generation":1}"#);
    let listed = s3(
        reqwest::Method::GET,
        "/goman-state?list-type=2&prefix=clusters%2F",
    )
    .send()
    .await?
    .text()
    .await?;
    assert!(listed.contains("<Key>clusters/a.json</Key>"), "{listed}");
    let absent = s3(reqwest::Method::GET, "/goman-state/clusters/zz.json")
        .send()
        .await?;
    assert_eq!(absent.status(), StatusCode::NOT_FOUND);

    for (service, op, calls) in [
        ("ssm", "PutParameter", 1),
        ("ssm", "GetParameter", 2),
        ("ec2", "DescribeInstances", 1),
        ("ec2", "CreateVpc", 1),
        ("s3", "CreateBucket", 1),
        ("s3", "PutObject", 1),
        ("s3", "HeadObject", 1),
        ("s3", "GetObject", 2),
        ("s3", "ListObjectsV2", 1),
    ] {
        assert_eq!(front.calls(service, Some(op)), calls, "{service} {op}");
        assert_eq!(
            front.calls_forwarded(service, Some(op)),
            calls,
            "{service} {op}"
        );
    }
    assert_eq!(front.calls("s3", None), 6);
    front.reset_counts();
    assert_eq!(front.calls("s3", None), 0);
    assert!(front.call_counts().is_empty());
    Ok(())
}

#[tokio::test]
async fn injected_faults_have_each_services_real_shape() -> anyhow::Result<()> {
    let (upstream, front) = front_without_moto(SEED).await;
    let client = reqwest::Client::new();

    // EC2: XML `<Response><Errors>...<RequestID>`; 500 InternalError, 503
    // RequestLimitExceeded.
    front.push_next("ec2", Some("RunInstances"), AwsFault::Error);
    front.push_next("ec2", None, AwsFault::Throttle);
    let (status, body) = ec2(&client, &front, "Action=RunInstances&ClientToken=t-1").await?;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("<Response><Errors><Error><Code>InternalError</Code><Message>")
            && body.contains("</Error></Errors><RequestID>"),
        "{body}"
    );
    let (status, body) = ec2(&client, &front, "Action=DescribeInstances").await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("<Code>RequestLimitExceeded</Code>"), "{body}");

    // SSM: JSON 1.1, 500 InternalServerError, 400 ThrottlingException.
    front.push_next("ssm", None, AwsFault::Error);
    front.push_next("ssm", None, AwsFault::Throttle);
    let error = ssm(
        &client,
        &front,
        "SendCommand",
        send_command_body(&["i-1"], &["x"]),
    )
    .await?;
    assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error.body["__type"], "InternalServerError");
    assert_eq!(error.error_type.as_deref(), Some("InternalServerError"));
    let throttled = ssm(&client, &front, "GetParameter", json!({ "Name": "/x" })).await?;
    assert_eq!(throttled.status, StatusCode::BAD_REQUEST);
    assert_eq!(throttled.body["__type"], "ThrottlingException");
    assert!(
        front.invocations().is_empty(),
        "a faulted SendCommand runs nothing"
    );

    // DynamoDB: JSON 1.0 with the namespace in `__type`.
    front.push_next("dynamodb", Some("PutItem"), AwsFault::Throttle);
    front.push_next("dynamodb", Some("CreateTable"), AwsFault::Throttle);
    front.push_next("dynamodb", None, AwsFault::Error);
    let item = json!({ "TableName": "t", "Item": { "pk": { "S": "a" } } });
    let throttled = dynamodb(&client, &front, "PutItem", item.clone()).await?;
    assert_eq!(throttled.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        throttled.body["__type"],
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
    );
    assert_eq!(
        throttled.error_type.as_deref(),
        Some("ProvisionedThroughputExceededException")
    );
    let table_throttled = dynamodb(&client, &front, "CreateTable", json!({})).await?;
    assert_eq!(
        table_throttled.body["__type"],
        "com.amazonaws.dynamodb.v20120810#ThrottlingException"
    );
    let error = dynamodb(&client, &front, "PutItem", item).await?;
    assert_eq!(error.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error.body["__type"],
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    );

    // S3: `<Error><Code>...`; 500 InternalError, 503 SlowDown.
    front.push_next("s3", Some("PutObject"), AwsFault::Error);
    front.push_next("s3", None, AwsFault::Throttle);
    let put = client
        .put(format!("{}/b/k", front.url()))
        .header("authorization", authorization("s3"))
        .body("x")
        .send()
        .await?;
    assert_eq!(put.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = put.text().await?;
    assert!(body.contains("<Error><Code>InternalError</Code>"), "{body}");
    let get = client
        .get(format!("{}/b/k", front.url()))
        .header("authorization", authorization("s3"))
        .send()
        .await?;
    assert_eq!(get.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(get.text().await?.contains("<Code>SlowDown</Code>"));

    // Other query services (STS): `<ErrorResponse>`, 400 Throttling.
    front.push_next("sts", None, AwsFault::Throttle);
    let sts = client
        .post(front.url())
        .header("authorization", authorization("sts"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("Action=GetCallerIdentity&Version=2011-06-15")
        .send()
        .await?;
    assert_eq!(sts.status(), StatusCode::BAD_REQUEST);
    assert!(sts.text().await?.contains("<Code>Throttling</Code>"));

    assert_eq!(front.calls("ec2", Some("RunInstances")), 1);
    assert_eq!(front.calls("dynamodb", None), 3);
    assert_eq!(
        front.calls_forwarded("ec2", None)
            + front.calls_forwarded("ssm", None)
            + front.calls_forwarded("dynamodb", None)
            + front.calls_forwarded("s3", None)
            + front.calls_forwarded("sts", None),
        0
    );
    assert_eq!(
        upstream.request_count(),
        0,
        "no faulted call reached upstream"
    );
    Ok(())
}

#[tokio::test]
async fn a_lost_response_takes_effect_in_moto_and_a_drop_does_not() -> anyhow::Result<()> {
    let moto = Moto::start().await;
    let front = AwsFront::start(moto.url(), SEED).await?;
    let client = reqwest::Client::new();
    let created = dynamodb(
        &client,
        &front,
        "CreateTable",
        json!({
            "TableName": "clusters",
            "KeySchema": [{ "AttributeName": "pk", "KeyType": "HASH" }],
            "AttributeDefinitions": [{ "AttributeName": "pk", "AttributeType": "S" }],
            "BillingMode": "PAY_PER_REQUEST",
        }),
    )
    .await?;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let put = |pk: &str| json!({ "TableName": "clusters", "Item": { "pk": { "S": pk } } });
    let get = |pk: &str| json!({ "TableName": "clusters", "Key": { "pk": { "S": pk } } });

    front.push_next(
        "dynamodb",
        Some("PutItem"),
        AwsFault::LostResponse(Lost::Close),
    );
    let lost = dynamodb(&client, &front, "PutItem", put("closed")).await;
    assert!(
        lost.is_err(),
        "the caller never heard: {:?}",
        lost.map(|a| a.status)
    );
    let read = dynamodb(&client, &front, "GetItem", get("closed")).await?;
    assert_eq!(read.body["Item"]["pk"]["S"], "closed", "but moto has it");

    front.push_next(
        "dynamodb",
        Some("PutItem"),
        AwsFault::LostResponse(Lost::GatewayTimeout),
    );
    let timed_out = dynamodb(&client, &front, "PutItem", put("504")).await?;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    let read = dynamodb(&client, &front, "GetItem", get("504")).await?;
    assert_eq!(read.body["Item"]["pk"]["S"], "504");

    front.push_next("dynamodb", Some("PutItem"), AwsFault::Drop);
    assert!(
        dynamodb(&client, &front, "PutItem", put("dropped"))
            .await
            .is_err()
    );
    let read = dynamodb(&client, &front, "GetItem", get("dropped")).await?;
    assert_eq!(read.status, StatusCode::OK);
    assert!(
        read.body.get("Item").is_none(),
        "a drop never reached moto: {}",
        read.body
    );

    assert_eq!(front.calls("dynamodb", Some("PutItem")), 3);
    assert_eq!(front.calls_forwarded("dynamodb", Some("PutItem")), 2);
    assert_eq!(front.calls_forwarded("dynamodb", Some("GetItem")), 3);
    Ok(())
}

/// The statuses of `n` STS calls through a front seeded with `seed`.
async fn sts_statuses(seed: u64, faults: AwsFaults, n: usize) -> Vec<u16> {
    let (_upstream, front) = front_without_moto(seed).await;
    front.set_faults("sts", None, faults).unwrap();
    let client = reqwest::Client::new();
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let response = client
            .post(front.url())
            .header("authorization", authorization("sts"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("Action=GetCallerIdentity")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn probabilistic_faults_are_seeded_and_set_per_operation() -> anyhow::Result<()> {
    let faults = AwsFaults::none().with_errors(0.3).with_throttles(0.2);
    let a = sts_statuses(7, faults, 60).await;
    assert_eq!(
        a,
        sts_statuses(7, faults, 60).await,
        "same seed, same faults"
    );
    assert_ne!(a, sts_statuses(8, faults, 60).await);
    let count = |code: u16| a.iter().filter(|s| **s == code).count();
    // Throttled 20 %, then 30 % of the rest fail; the others reach the
    // upstream fake, which answers 404.
    assert!((4..=24).contains(&count(400)), "throttled {}", count(400));
    assert!((6..=26).contains(&count(500)), "errors {}", count(500));
    assert_eq!(count(400) + count(500) + count(404), 60);

    let (_upstream, front) = front_without_moto(SEED).await;
    let client = reqwest::Client::new();
    front.set_faults("ec2", None, AwsFaults::none().with_throttles(1.0))?;
    front.set_faults("ec2", Some("DescribeInstances"), AwsFaults::none())?;
    assert_eq!(front.faults("ec2", None).throttle_rate, 1.0);
    assert!(
        front
            .set_faults("ec2", None, AwsFaults::none().with_errors(2.0))
            .is_err()
    );
    let (status, _) = ec2(&client, &front, "Action=RunInstances").await?;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the service's faults"
    );
    let (status, _) = ec2(&client, &front, "Action=DescribeInstances").await?;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "exempt: forwarded to the upstream"
    );

    front.clear_faults();
    front.set_faults(
        "ec2",
        Some("DescribeInstances"),
        AwsFaults::none().with_latency(Duration::from_millis(150), Duration::from_millis(150)),
    )?;
    let started = Instant::now();
    let (status, _) = ec2(&client, &front, "Action=DescribeInstances").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(150));
    front.push_next("ec2", None, AwsFault::Delay(Duration::from_millis(100)));
    let started = Instant::now();
    let (status, _) = ec2(&client, &front, "Action=RunInstances").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert_eq!(front.calls("ec2", None), 4);
    assert_eq!(front.calls_forwarded("ec2", None), 3);
    Ok(())
}
