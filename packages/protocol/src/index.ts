/**
 * @livemig/protocol — livemig's wire format: connection hello, framed msgpack
 * headers with raw zero-copy payloads, strict validation, block layout checks
 * and postcopy discard batching. Knows nothing about sockets.
 */
export { ProtocolError, type ProtocolErrorCode } from './errors.js';
export {
  MsgType, ALL_MSG_TYPES, isMsgType, msgTypeName, Capability,
  MIN_PAGE_SIZE, MAX_PAGE_SIZE, MAX_OFFSET, MAX_BLOCKS, MAX_BLOCK_NAME, MAX_PAGES_PER_FRAME, MAX_ZERO_RUNS,
  MAX_DISCARDS_PER_COMMAND, MAX_REQUEST_BYTES, MAX_REASON_CHARS, MAX_CAPS, MAX_VCPUS, MAX_ADVISE_PAGE_SIZES,
  MAX_VALUE_DEPTH, TRIM_UNIT, MAX_TRIMMED_RUN_BYTES,
  type MsgTypeName, type Message, type MessageOf, type BlockInfo, type GuestInfo,
  type SetupMessage, type PagesMessage, type PageRunMessage, type TrimmedRunMessage, type ZeroMessage, type DeviceMessage,
  type RoundMessage, type AdviseMessage, type DiscardMessage, type ListenMessage, type RunMessage,
  type EndMessage, type CompleteMessage, type StoppedMessage, type PingMessage, type PongMessage, type AckMessage,
  type ReqPagesMessage, type ShutMessage, type RecvBitmapMessage, type ResumeMessage,
  type ResumeAckMessage, type ErrorMessage,
} from './messages.js';
export { ROLES, ROLE_CODES, allowedOn, isChannelRole, roleFromCode, type ChannelRole } from './channels.js';
export {
  PROTOCOL_VERSION, HELLO_BYTES, HELLO_MAGIC, encodeHello, decodeHello, checkHello, HelloReader, newMigrationId,
  type Hello,
} from './hello.js';
export { PREFIX_BYTES, DEFAULT_LIMITS, resolveLimits, type Limits, type Frame } from './frame.js';
export { EMPTY_PAYLOAD, toPayload, payloadToBuffer, forEachPageRun, type Payload } from './payload.js';
export { validateMessage, expectedPayloadLength } from './validate.js';
export { keptUnits, writeTrimmedRun, expandTrimmedRun, clearTrimmedRun } from './trimmed.js';
export { FrameEncoder, encodeHeader, encodeFrame } from './encoder.js';
export { FrameDecoder, type DecoderOptions } from './decoder.js';
export { ReadRing, type ReadRingOptions } from './read-ring.js';
export { BlockTable } from './blocks.js';
export { DiscardBatcher } from './discard.js';
