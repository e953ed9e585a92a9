//! The OpenAPI 3.1 document, generated from the handlers' annotations and the serde
//! types they answer with, and served at `/api/openapi.json`. Every route is registered
//! through [`routes`], so a route cannot be served without being documented.

use std::sync::LazyLock;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use utoipa::{
    openapi::{
        response::ResponseBuilder,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
        HeaderBuilder, OpenApi as Document, RefOr, SecurityRequirement,
    },
    Modify, OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{auth, backup, error::ErrorBody, events, ops, pairs, Ctx};

pub(super) const EVENTS: &str = "Server-Sent Events. `hello` (data `{\"node\": id}`, id: the \
position the stream starts from) on connect; then one `change` per change applied on this node \
(local or replicated) whose key has the prefix, with id `<node>.<epoch>.<seq>` (increasing) and \
data `{\"key\", \"values\" (null when deleted), \"elements\" (null when deleted), \"deleted\", \
\"version\", \"origin\", \"updated_at\"}`; one `conflict` (data: a `ConflictNote`, no id) per \
conflict settled here. Given a position (`Last-Event-ID` or `last_event_id`), the stream first \
sends the final state of every key changed after it, once each, then live changes; `resync` \
(data `{\"reason\"}`) when it cannot resume from that position (another node or store, \
malformed, ahead, or older than collected tombstones): reload. Comments keep the connection \
alive.";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kvsync",
        description = "A replicated key-value store: each node serves this API over its own \
            MongoDB, and nodes replicate through a Kafka topic. Errors are JSON `Error` \
            bodies. When the node has an API token (`KVSYNC_API_TOKEN`), every `/api/` \
            route and `/metrics` need it as a bearer token."
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "pairs", description = "Keys and their lists of values"),
        (name = "feed", description = "The change feed"),
        (name = "backup", description = "Export and import"),
        (name = "operations", description = "Health, status and metrics"),
    )
)]
struct ApiDoc;

/// Every route of the API, with its documentation.
pub(super) fn routes() -> OpenApiRouter<Ctx> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(pairs::list, pairs::clear))
        .routes(routes!(pairs::get, pairs::put, pairs::delete))
        .routes(routes!(pairs::append))
        .routes(routes!(pairs::edit_value, pairs::remove_value))
        .routes(routes!(pairs::conflicts, pairs::dismiss_conflicts))
        .routes(routes!(events::events))
        .routes(routes!(ops::node))
        .routes(routes!(ops::cluster))
        .routes(routes!(backup::export))
        .routes(routes!(backup::import))
        .routes(routes!(ops::digest))
        .routes(routes!(openapi_json))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The document, as the node serves it.
pub fn document() -> Document {
    let mut doc = routes().split_for_parts().1;
    // After the routes are in: `ApiDoc`'s own modifiers would run before.
    Conventions.modify(&mut doc);
    doc
}

/// The document as a node with (`auth`) or without an API token serves it, as pretty
/// JSON with a final newline.
pub fn document_json_for(auth: bool) -> String {
    let mut doc = serde_json::to_value(document()).expect("the document serializes");
    super::contract::refine(&mut doc, auth);
    let mut text = serde_json::to_string_pretty(&doc).expect("the document serializes");
    text.push('\n');
    text
}

/// The document of a node with an API token, as committed in `docs/` (a node without
/// one serves it without the security requirements and the 401 answers).
pub fn document_json() -> String {
    document_json_for(true)
}

static WITH_TOKEN: LazyLock<String> = LazyLock::new(|| document_json_for(true));
static WITHOUT_TOKEN: LazyLock<String> = LazyLock::new(|| document_json_for(false));

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object))
)]
async fn openapi_json(State(ctx): State<Ctx>) -> Response {
    let doc = if ctx.token.is_some() {
        &WITH_TOKEN
    } else {
        &WITHOUT_TOKEN
    };
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str()).into_response()
}

/// What holds for every route, added once rather than on each: the auth schemes, 401 on
/// protected routes, 504 from the request timeout and 503 from the connection cap.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's API token (KVSYNC_API_TOKEN), when it has one",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "access_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "access_token",
                "The API token as a query parameter, on /api/events only (EventSource \
                 cannot send headers)",
            ))),
        );
        let error = |description: &str| {
            ResponseBuilder::new().description(description).content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                        "Error",
                    ))))
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let protected = auth::is_protected(path);
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut op.responses.responses;
                if protected {
                    if op.security.is_none() {
                        op.security = Some(vec![SecurityRequirement::new(
                            "bearer",
                            Vec::<String>::new(),
                        )]);
                    }
                    responses.insert(
                        "401".to_owned(),
                        RefOr::T(
                            error("`unauthorized`: the node has an API token and the request did not carry it")
                                .header(
                                    "WWW-Authenticate",
                                    HeaderBuilder::new()
                                        .schema(utoipa::openapi::Object::with_type(
                                            utoipa::openapi::Type::String,
                                        ))
                                        .description(Some("`Bearer`"))
                                        .build(),
                                )
                                .build(),
                        ),
                    );
                }
                if path != "/api/events" {
                    responses.insert(
                        "504".to_owned(),
                        RefOr::T(
                            error("`timeout`: no answer within the request timeout (KVSYNC_REQUEST_TIMEOUT_MS); a write may still be applied")
                                .build(),
                        ),
                    );
                }
                let cap = "`too_many_connections`: the node holds its maximum of connections";
                match responses.get_mut("503") {
                    Some(RefOr::T(r)) => r.description = format!("{}; {cap}", r.description),
                    _ => {
                        responses.insert("503".to_owned(), RefOr::T(error(cap).build()));
                    }
                }
            }
        }
    }
}
