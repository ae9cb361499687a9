//! What the nodes of a cluster say to each other about mesh calls, on the
//! bus. Protobuf (prost) like everything else Busbar sends, private to the
//! nodes: a forwarded call reuses the messages of `busbar.v1.Mesh`
//! (`CallStart`, `CallRequest`, `Credit`, `CallCancel`, `ProviderResponse`)
//! inside a frame that says which node sent it, which call it belongs to
//! and where it falls in that call's order.

use busbar_proto::v1 as pb;
use bytes::Bytes;

/// One frame of a forwarded call, or a beat, on a node's subject.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Frame {
    /// The sending node's id.
    #[prost(string, tag = "1")]
    pub from: String,
    /// The call, numbered by the caller's node.
    #[prost(uint64, tag = "2")]
    pub call: u64,
    /// Per call and direction, from 0: a frame out of turn means one was
    /// lost, and the call fails rather than carry on with a hole.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// The message this frame carries goes on in the next frame (a message
    /// larger than the bus carries at once travels in pieces).
    #[prost(bool, tag = "4")]
    pub more: bool,
    /// From the provider's node to the caller's (otherwise the other way).
    #[prost(bool, tag = "5")]
    pub reply: bool,
    #[prost(oneof = "Body", tags = "6, 7, 8, 9, 10, 11")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Body {
    /// A new call for one provider of the receiving node.
    #[prost(message, tag = "6")]
    Start(Start),
    /// A request message or half-close, response credit, or a cancel.
    #[prost(message, tag = "7")]
    ToProvider(pb::ToProvider),
    /// A response message and/or the call's end, or request credit.
    #[prost(message, tag = "8")]
    FromProvider(pb::FromProvider),
    /// The call did not run there, or its provider was lost while it ran.
    #[prost(message, tag = "9")]
    Gone(Gone),
    /// The calls still open between the two nodes (a beat, every second
    /// while there are any).
    #[prost(message, tag = "10")]
    Open(Open),
    /// The next piece of a message that goes on from the frame before.
    #[prost(bytes = "bytes", tag = "11")]
    Piece(Bytes),
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Start {
    /// The provider's id (on the receiving node).
    #[prost(string, tag = "1")]
    pub provider: String,
    #[prost(message, optional, tag = "2")]
    pub start: Option<pb::CallStart>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Gone {
    /// The provider had the call (and was lost with it); otherwise the call
    /// never ran and may go to another provider, whatever its kind.
    #[prost(bool, tag = "1")]
    pub started: bool,
    #[prost(string, tag = "2")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Open {
    /// Calls of the receiver's numbering that the sender runs for it.
    #[prost(uint64, repeated, tag = "1")]
    pub serving: Vec<u64>,
    /// Calls of the sender's numbering that it waits on at the receiver.
    #[prost(uint64, repeated, tag = "2")]
    pub awaiting: Vec<u64>,
}

/// What each node tells every other every second: that it lives, and how
/// busy its providers are.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Alive {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(message, repeated, tag = "2")]
    pub providers: Vec<Load>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Load {
    #[prost(string, tag = "1")]
    pub provider: String,
    /// Its calls in flight, from every node.
    #[prost(uint64, tag = "2")]
    pub in_flight: u64,
    #[prost(uint64, tag = "3")]
    pub served: u64,
    #[prost(bool, tag = "4")]
    pub draining: bool,
    /// Of those, the ones other nodes sent, by node: each node adds the
    /// others' to what it knows of its own now.
    #[prost(message, repeated, tag = "5")]
    pub from_nodes: Vec<NodeCalls>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NodeCalls {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, tag = "2")]
    pub calls: u64,
}

/// The message a body carries, if it is of a kind that carries one.
fn message_of(body: &mut Body) -> Option<&mut Option<Bytes>> {
    use pb::{from_provider::Message as From, to_provider::Message as To};
    match body {
        Body::Start(start) => start.start.as_mut().map(|s| &mut s.message),
        Body::ToProvider(pb::ToProvider {
            message: Some(To::Request(request)),
        }) => Some(&mut request.message),
        Body::FromProvider(pb::FromProvider {
            message: Some(From::Response(response)),
        }) => Some(&mut response.message),
        _ => None,
    }
}

/// The bodies that carry `body` when each frame may hold at most `piece`
/// bytes of message, each with whether more follow.
pub(crate) fn split(mut body: Body, piece: usize) -> Vec<(Body, bool)> {
    let Some(Some(message)) = message_of(&mut body) else {
        return vec![(body, false)];
    };
    if message.len() <= piece {
        return vec![(body, false)];
    }
    let mut rest = message.split_off(piece);
    let mut out = vec![(body, true)];
    while rest.len() > piece {
        let next = rest.split_off(piece);
        out.push((Body::Piece(rest), true));
        rest = next;
    }
    out.push((Body::Piece(rest), false));
    out
}

/// A message arriving in pieces: the frame that began it, and what has come.
pub(crate) struct Partial {
    head: Body,
    message: bytes::BytesMut,
}

/// What a frame adds to a call's message in pieces.
pub(crate) enum Assembled {
    /// The whole body, its message complete.
    Whole(Body),
    /// More pieces are to come.
    Waiting,
    /// The pieces do not make a message (out of place, or too large).
    Broken(String),
}

/// Takes `body` (with `more`) into the message being assembled in
/// `partial`, which holds at most `limit` bytes.
pub(crate) fn assemble(
    partial: &mut Option<Partial>,
    mut body: Body,
    more: bool,
    limit: usize,
) -> Assembled {
    match (partial.take(), body) {
        (None, Body::Piece(_)) => {
            Assembled::Broken("a piece of a message that did not begin".into())
        }
        (Some(mut held), Body::Piece(piece)) => {
            if held.message.len() + piece.len() > limit {
                return Assembled::Broken(format!(
                    "a message of more than {limit} bytes (the node's max_message_bytes)"
                ));
            }
            held.message.extend_from_slice(&piece);
            if more {
                *partial = Some(held);
                return Assembled::Waiting;
            }
            let Partial { mut head, message } = held;
            if let Some(slot) = message_of(&mut head) {
                *slot = Some(message.freeze());
            }
            Assembled::Whole(head)
        }
        (Some(_), _) => Assembled::Broken("a message's pieces were interrupted".into()),
        (None, whole) if !more => Assembled::Whole(whole),
        (None, whole) => {
            body = whole;
            let begun = message_of(&mut body)
                .and_then(Option::take)
                .map(|m| bytes::BytesMut::from(&m[..]));
            match begun {
                Some(message) => {
                    *partial = Some(Partial {
                        head: body,
                        message,
                    });
                    Assembled::Waiting
                }
                None => {
                    Assembled::Broken("a frame said more follows but carried no message".into())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::from_provider::Message as From;

    fn response(message: &[u8]) -> Body {
        Body::FromProvider(pb::FromProvider {
            message: Some(From::Response(pb::ProviderResponse {
                call: 7,
                message: Some(Bytes::copy_from_slice(message)),
                end: Some(pb::CallStatus::default()),
            })),
        })
    }

    #[test]
    fn a_large_message_travels_in_pieces_and_comes_back_whole() {
        let message: Vec<u8> = (0..1000u32).map(|n| n as u8).collect();
        let frames = split(response(&message), 300);
        assert_eq!(frames.len(), 4);
        assert!(frames[..3].iter().all(|(_, more)| *more));
        assert!(!frames[3].1);
        let mut partial = None;
        let mut whole = None;
        for (body, more) in frames {
            match assemble(&mut partial, body, more, 10_000) {
                Assembled::Whole(body) => whole = Some(body),
                Assembled::Waiting => {}
                Assembled::Broken(why) => panic!("{why}"),
            }
        }
        assert_eq!(whole, Some(response(&message)));
        // A small one is one frame.
        assert_eq!(split(response(b"hi"), 300).len(), 1);
    }

    #[test]
    fn pieces_past_the_limit_or_out_of_place_are_refused() {
        let mut partial = None;
        let frames = split(response(&[1; 1000]), 300);
        let mut last = None;
        for (body, more) in frames {
            last = Some(assemble(&mut partial, body, more, 500));
        }
        assert!(matches!(last, Some(Assembled::Broken(_))));
        assert!(matches!(
            assemble(&mut None, Body::Piece(Bytes::from_static(b"x")), false, 500),
            Assembled::Broken(_)
        ));
    }
}
