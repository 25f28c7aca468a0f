#ifndef SRV_HTTP_CHARS_H
#define SRV_HTTP_CHARS_H

/* Byte-level HTTP grammar for the response path, in C so that the per-byte loops compile
 * to tight code with no Swift bounds or lazy-global checks. */

#include <stddef.h>

/* 1 when c may appear in an RFC 9110 token (a header name), else 0. */
int srv_http_is_tchar(unsigned char c);

/* 1 when p[0..<n] may be a field value (or a status line's reason): no control character
 * other than tab (CR, LF, NUL...) and no DEL; obs-text is allowed. */
int srv_http_is_field_value(const char *p, size_t n);

/* Writes "name: value\r\n" at dst, which has room for nlen + vlen + 4 bytes, checking
 * while it copies. Returns the bytes written, or 0 when the name is empty or not a token,
 * or the value holds a control character other than tab (CR, LF, NUL, DEL...): dst then
 * holds a partial copy, which the caller does not count. */
size_t srv_http_put_field(unsigned char *restrict dst, const char *restrict name, size_t nlen,
                          const char *restrict value, size_t vlen);

/* 1 when p[0..<n] is a valid Host value or absolute-form authority (RFC 9112 3.2, RFC 3986
 * 3.2.2): host[:port], the host a reg-name (unreserved, pct-encoded, sub-delims), an IPv4
 * address or an IP literal in brackets (a valid IPv6 address, or an IPvFuture); no
 * userinfo, spaces, slashes or bytes outside ASCII. An empty value is valid. */
int srv_http_is_host(const char *p, size_t n);

/* Where a head at the start of p[0..<n] ends: the offset after its CR LF CR LF, or -1
 * when it has not fully arrived (memmem: a few instructions per 16 bytes). */
long srv_http_head_end(const char *p, size_t n);

#endif
