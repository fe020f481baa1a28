/**
 * @livemig/transport — migration channels over TCP: hellos, framed reads and writes with
 * backpressure, endpoints, and the shape of the migration report.
 */
export * from './address.js';
export * from './channel.js';
export * from './handshake.js';
export * from './report.js';
export * from './trace.js';
