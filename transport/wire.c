/*
 * The transport's frames, handshake MACs and QEMU stream classification (wire.h).
 */
#include <glib.h>
#include <string.h>

#include "common/error.h"
#include "wire.h"

static const char *const kind_names[TP_KIND_COUNT] = {
    [TP_KIND_CONTROL] = "control", [TP_KIND_MAIN] = "main", [TP_KIND_MULTIFD] = "multifd",
    [TP_KIND_PREEMPT] = "preempt", [TP_KIND_QMP] = "qmp",   [TP_KIND_NBD] = "nbd",
};

const char *tp_kind_name(tp_kind k)
{
    return (unsigned)k < TP_KIND_COUNT ? kind_names[k] : "unknown";
}

static const char *type_name(unsigned t)
{
    switch (t) {
    case TP_CHALLENGE:
        return "CHALLENGE";
    case TP_HELLO:
        return "HELLO";
    case TP_WELCOME:
        return "WELCOME";
    case TP_REFUSE:
        return "REFUSE";
    case TP_CONTROL:
        return "CONTROL";
    default:
        return NULL;
    }
}

/* The payload length a type requires: exact (> 0), or 0 for "text up to a bound". */
static size_t fixed_len(tp_type t)
{
    switch (t) {
    case TP_CHALLENGE:
        return TP_NONCE_LEN;
    case TP_HELLO:
        return TP_HELLO_LEN;
    case TP_WELCOME:
        return TP_MAC_LEN;
    default:
        return 0;
    }
}

tp_parse_result tp_frame_parse(const uint8_t *buf, size_t len, tp_frame *ret, size_t *consumed,
                               vmig_error **errp)
{
    /* Judge what has arrived at once: garbage is refused on its first bytes, not after a
     * length's worth of waiting. */
    size_t m = MIN(len, (size_t)4);
    if (memcmp(buf, TP_MAGIC, m) != 0) {
        vmig_set_error(errp, VMIG_E_PROTO, "not a vmigrate transport frame (bad magic)");
        return TP_PARSE_ERROR;
    }
    if (len > 4 && buf[4] != TP_VERSION) {
        vmig_set_error(errp, VMIG_E_PROTO, "transport protocol version %u, expected %u", buf[4],
                       TP_VERSION);
        return TP_PARSE_ERROR;
    }
    if (len > 5 && !type_name(buf[5])) {
        vmig_set_error(errp, VMIG_E_PROTO, "unknown transport frame type %u", buf[5]);
        return TP_PARSE_ERROR;
    }
    if (len < TP_HEADER_LEN) {
        return TP_PARSE_MORE;
    }
    tp_type type = (tp_type)buf[5];
    size_t plen = (size_t)buf[6] << 8 | buf[7];
    size_t want = fixed_len(type);
    size_t max = type == TP_REFUSE ? TP_REASON_MAX : TP_PAYLOAD_MAX;
    if (want && plen != want) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s frame of %zu bytes, expected %zu", type_name(type),
                       plen, want);
        return TP_PARSE_ERROR;
    }
    if (!want && plen > max) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s frame of %zu bytes, over the limit of %zu",
                       type_name(type), plen, max);
        return TP_PARSE_ERROR;
    }
    if (len - TP_HEADER_LEN < plen) {
        return TP_PARSE_MORE;
    }
    const uint8_t *payload = buf + TP_HEADER_LEN;
    if (!want && memchr(payload, '\0', plen)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s frame text holds a NUL byte", type_name(type));
        return TP_PARSE_ERROR;
    }
    if (!want && !g_utf8_validate((const char *)payload, (gssize)plen, NULL)) {
        vmig_set_error(errp, VMIG_E_PROTO, "%s frame text is not UTF-8", type_name(type));
        return TP_PARSE_ERROR;
    }
    ret->type = type;
    ret->len = plen;
    ret->payload = payload;
    *consumed = TP_HEADER_LEN + plen;
    return TP_PARSE_OK;
}

size_t tp_frame_encode(tp_type type, const void *payload, size_t len, uint8_t *out)
{
    if (len > TP_PAYLOAD_MAX) {
        return 0;
    }
    static const uint8_t magic[4] = {'V', 'M', 'G', 'W'}; /* TP_MAGIC, without its NUL */
    memcpy(out, magic, sizeof(magic));
    out[4] = TP_VERSION;
    out[5] = (uint8_t)type;
    out[6] = (uint8_t)(len >> 8);
    out[7] = (uint8_t)len;
    if (len) {
        memcpy(out + TP_HEADER_LEN, payload, len);
    }
    return TP_HEADER_LEN + len;
}

/* ---- HELLO and WELCOME ----------------------------------------------------------------------- */

void tp_hello_encode(const tp_hello *h, uint8_t out[TP_HELLO_LEN])
{
    uint8_t *p = out;
    *p++ = h->kind;
    *p++ = 0;
    *p++ = (uint8_t)(h->index >> 8);
    *p++ = (uint8_t)h->index;
    memcpy(p, h->token, TP_TOKEN_LEN);
    p += TP_TOKEN_LEN;
    memcpy(p, h->nonce, TP_NONCE_LEN);
    p += TP_NONCE_LEN;
    memcpy(p, h->mac, TP_MAC_LEN);
}

bool tp_hello_decode(const tp_frame *f, tp_hello *ret, vmig_error **errp)
{
    if (f->type != TP_HELLO || f->len != TP_HELLO_LEN) {
        vmig_set_error(errp, VMIG_E_PROTO, "expected a HELLO frame, got %s",
                       type_name(f->type) ? type_name(f->type) : "garbage");
        return false;
    }
    const uint8_t *p = f->payload;
    if (p[0] >= TP_KIND_COUNT) {
        vmig_set_error(errp, VMIG_E_PROTO, "HELLO for an unknown channel kind %u", p[0]);
        return false;
    }
    if (p[1] != 0) {
        vmig_set_error(errp, VMIG_E_PROTO, "HELLO with reserved byte %u, expected 0", p[1]);
        return false;
    }
    ret->kind = p[0];
    ret->index = (uint16_t)(p[2] << 8 | p[3]);
    p += 4;
    memcpy(ret->token, p, TP_TOKEN_LEN);
    p += TP_TOKEN_LEN;
    memcpy(ret->nonce, p, TP_NONCE_LEN);
    p += TP_NONCE_LEN;
    memcpy(ret->mac, p, TP_MAC_LEN);
    return true;
}

static void hello_mac(const tp_hello *h, const uint8_t *key, size_t key_len,
                      const uint8_t challenge[TP_NONCE_LEN], uint8_t out[TP_MAC_LEN])
{
    static const char label[] = "vmigrate hello 1";
    uint8_t fields[4] = {h->kind, 0, (uint8_t)(h->index >> 8), (uint8_t)h->index};
    GHmac *m = g_hmac_new(G_CHECKSUM_SHA256, key, key_len);
    g_hmac_update(m, (const guchar *)label, sizeof(label) - 1);
    g_hmac_update(m, challenge, TP_NONCE_LEN);
    g_hmac_update(m, h->nonce, TP_NONCE_LEN);
    g_hmac_update(m, fields, sizeof(fields));
    g_hmac_update(m, h->token, TP_TOKEN_LEN);
    gsize n = TP_MAC_LEN;
    g_hmac_get_digest(m, out, &n);
    g_hmac_unref(m);
}

void tp_hello_sign(tp_hello *h, const uint8_t *key, size_t key_len,
                   const uint8_t challenge[TP_NONCE_LEN])
{
    hello_mac(h, key, key_len, challenge, h->mac);
}

bool tp_hello_verify(const tp_hello *h, const uint8_t *key, size_t key_len,
                     const uint8_t challenge[TP_NONCE_LEN])
{
    uint8_t want[TP_MAC_LEN];
    hello_mac(h, key, key_len, challenge, want);
    return tp_ct_equal(want, h->mac, TP_MAC_LEN);
}

void tp_welcome_mac(const uint8_t *key, size_t key_len, const uint8_t source_nonce[TP_NONCE_LEN],
                    const uint8_t challenge[TP_NONCE_LEN], uint8_t out[TP_MAC_LEN])
{
    static const char label[] = "vmigrate welcome 1";
    GHmac *m = g_hmac_new(G_CHECKSUM_SHA256, key, key_len);
    g_hmac_update(m, (const guchar *)label, sizeof(label) - 1);
    g_hmac_update(m, source_nonce, TP_NONCE_LEN);
    g_hmac_update(m, challenge, TP_NONCE_LEN);
    gsize n = TP_MAC_LEN;
    g_hmac_get_digest(m, out, &n);
    g_hmac_unref(m);
}

bool tp_welcome_verify(const tp_frame *f, const uint8_t *key, size_t key_len,
                       const uint8_t source_nonce[TP_NONCE_LEN],
                       const uint8_t challenge[TP_NONCE_LEN])
{
    if (f->type != TP_WELCOME || f->len != TP_MAC_LEN) {
        return false;
    }
    uint8_t want[TP_MAC_LEN];
    tp_welcome_mac(key, key_len, source_nonce, challenge, want);
    return tp_ct_equal(want, f->payload, TP_MAC_LEN);
}

bool tp_ct_equal(const void *a, const void *b, size_t n)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++) {
        diff |= x[i] ^ y[i];
    }
    return diff == 0;
}

/* ---- QEMU's streams -------------------------------------------------------------------------- */

tp_classify_result tp_classify(const uint8_t *buf, size_t len, unsigned *ret_multifd_id)
{
    static const uint8_t qevm[4] = {'Q', 'E', 'V', 'M'};
    static const uint8_t multifd[4] = {0x11, 0x22, 0x33, 0x44};
    size_t m = MIN(len, (size_t)4);
    bool main_so_far = memcmp(buf, qevm, m) == 0;
    bool multifd_so_far = memcmp(buf, multifd, m) == 0;
    if (!main_so_far && !multifd_so_far) {
        return TP_STREAM_OTHER;
    }
    if (main_so_far && len >= 4) {
        return TP_STREAM_MAIN;
    }
    if (multifd_so_far && len > TP_MULTIFD_ID_OFFSET) {
        *ret_multifd_id = buf[TP_MULTIFD_ID_OFFSET];
        return TP_STREAM_MULTIFD;
    }
    return TP_STREAM_MORE;
}
