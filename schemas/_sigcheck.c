/* The worker's signature check for a whole slice of records in one call.
 *
 * `Keyring.signers_of` (schemas/signing.py) is the Python face of this file;
 * `Keyring.signer_of` is the same check for one record, in Python, and the
 * fallback when this module was not built. Per record in Python the check
 * cost ~2.5 us in a drain (its header loop, two hash-state copies that
 * allocate, a hex digest, the GIL handed to the consumer thread between
 * them); here the HMACs of a slice run in C with the GIL released, so the
 * consumer thread parses the next fetch meanwhile.
 *
 * The HMAC-SHA256 (RFC 2104) starts from the key's two SHA-256 states after
 * the padded key blocks (`keyed_states`), computed once per key: a state is
 * a plain struct, copied by value. OpenSSL's SHA256_* calls are deprecated
 * in 3.0 in favour of EVP, whose context copies allocate; they remain, and
 * take the same assembly (SHA-NI where the CPU has it).
 */
#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED
#include <Python.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define BLOCK_BYTES 64
#define HEX_BYTES (2 * SHA256_DIGEST_LENGTH)
#define STATES_BYTES (2 * sizeof(SHA256_CTX))

static const char SIG_NAME[] = "tp-sig";
static const char TENANT_NAME[] = "tp-tenant";
static const char SIG_FIELD[] = ",sig=";

/* keyed_states(secret: bytes) -> bytes: the inner and the outer state. */
static PyObject *
keyed_states(PyObject *module, PyObject *arg)
{
    (void)module;
    Py_buffer secret;
    if (PyObject_GetBuffer(arg, &secret, PyBUF_SIMPLE) < 0)
        return NULL;
    unsigned char key[BLOCK_BYTES] = {0};
    if (secret.len > BLOCK_BYTES)
        SHA256(secret.buf, (size_t)secret.len, key);
    else
        memcpy(key, secret.buf, (size_t)secret.len);
    PyBuffer_Release(&secret);

    SHA256_CTX states[2];
    unsigned char pad[BLOCK_BYTES];
    for (int i = 0; i < 2; i++) {
        unsigned char mask = i == 0 ? 0x36 : 0x5c;
        for (int j = 0; j < BLOCK_BYTES; j++)
            pad[j] = key[j] ^ mask;
        SHA256_Init(&states[i]);
        SHA256_Update(&states[i], pad, BLOCK_BYTES);
    }
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(pad, sizeof pad);
    PyObject *out = PyBytes_FromStringAndSize((const char *)states, sizeof states);
    OPENSSL_cleanse(states, sizeof states);
    return out;
}

/* The str `name` is the ASCII `want` (header names are str). */
static int
name_is(PyObject *name, const char *want, Py_ssize_t want_len)
{
    return PyUnicode_CheckExact(name) && PyUnicode_IS_ASCII(name) &&
           PyUnicode_GET_LENGTH(name) == want_len &&
           memcmp(PyUnicode_DATA(name), want, (size_t)want_len) == 0;
}

/* One HMAC to compute: borrowed pointers into objects `owned` keeps alive. */
typedef struct {
    const unsigned char *value;
    Py_ssize_t value_len;
    const SHA256_CTX *states;
    const unsigned char *hex_sig;
    PyObject *signer_id; /* borrowed from the cache entry, kept by owned */
    Py_ssize_t index;
    int valid;
} Job;

/* The record's signature headers and its cache entry. Returns 1 with *entry
 * set (a new reference) when the key is in the cache, 1 with *entry NULL when
 * the record is not in sign_record's form or its key is not cached (the
 * caller marks the record UNKNOWN), 0 when the record is certainly not
 * signed in that form (no usable headers: None), -1 on error. */
static int
lookup(PyObject *rec, PyObject *resolved, Py_ssize_t max_bytes, PyObject **value, PyObject **sig,
       PyObject **entry)
{
    *entry = NULL;
    if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) < 6) {
        PyErr_SetString(PyExc_TypeError, "signers_of takes InRecord tuples");
        return -1;
    }
    *value = PyTuple_GET_ITEM(rec, 4);
    PyObject *headers = PyTuple_GET_ITEM(rec, 5);
    if (!PyBytes_CheckExact(*value) || PyBytes_GET_SIZE(*value) > max_bytes)
        return 0; /* rejected before its signature counts */
    PyObject *seq = PySequence_Fast(headers, "record headers must be a sequence");
    if (seq == NULL)
        return -1;
    PyObject *sig_raw = NULL, *signer = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = items[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(seq);
            return 1; /* not the usual shape: the Python check decides */
        }
        PyObject *name = PyTuple_GET_ITEM(pair, 0), *raw = PyTuple_GET_ITEM(pair, 1);
        if (!PyUnicode_CheckExact(name) && PyUnicode_Check(name)) {
            Py_DECREF(seq);
            return 1; /* a str subclass may equal a name: the Python check decides */
        }
        /* The first header of each name with a value counts, as in
         * Keyring.signer_of and verify_signature (a None value is skipped). */
        if (raw == Py_None)
            continue;
        if (name_is(name, SIG_NAME, sizeof SIG_NAME - 1)) {
            if (sig_raw == NULL)
                sig_raw = raw;
        }
        else if (signer == NULL && name_is(name, TENANT_NAME, sizeof TENANT_NAME - 1)) {
            signer = raw;
        }
    }
    if (sig_raw == NULL || signer == NULL || !PyBytes_CheckExact(sig_raw) ||
        !PyBytes_CheckExact(signer)) {
        Py_DECREF(seq);
        return 0;
    }
    const char *s = PyBytes_AS_STRING(sig_raw);
    Py_ssize_t len = PyBytes_GET_SIZE(sig_raw), at = -1;
    for (Py_ssize_t i = len - (Py_ssize_t)(sizeof SIG_FIELD - 1); i >= 0; i--) {
        if (memcmp(s + i, SIG_FIELD, sizeof SIG_FIELD - 1) == 0) {
            at = i;
            break;
        }
    }
    if (at < 0) {
        Py_DECREF(seq);
        return 0;
    }
    PyObject *head = PyBytes_FromStringAndSize(s, at);
    PyObject *key = head == NULL ? NULL : PyTuple_Pack(2, signer, head);
    Py_XDECREF(head);
    if (key == NULL) {
        Py_DECREF(seq);
        return -1;
    }
    PyObject *found = PyDict_GetItemWithError(resolved, key);
    Py_DECREF(key);
    if (found == NULL && PyErr_Occurred()) {
        Py_DECREF(seq);
        return -1;
    }
    *sig = sig_raw;
    Py_XINCREF(found);
    *entry = found;
    Py_INCREF(sig_raw); /* the headers tuple may be the only holder */
    Py_DECREF(seq);
    return 1;
}

static void
hmac_check(Job *job)
{
    SHA256_CTX ctx;
    unsigned char inner[SHA256_DIGEST_LENGTH], mac[SHA256_DIGEST_LENGTH];
    char hex[HEX_BYTES];
    static const char digits[] = "0123456789abcdef";
    memcpy(&ctx, &job->states[0], sizeof ctx);
    SHA256_Update(&ctx, job->value, (size_t)job->value_len);
    SHA256_Final(inner, &ctx);
    memcpy(&ctx, &job->states[1], sizeof ctx);
    SHA256_Update(&ctx, inner, sizeof inner);
    SHA256_Final(mac, &ctx);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 0xf];
    }
    job->valid = CRYPTO_memcmp(hex, job->hex_sig, HEX_BYTES) == 0;
}

/* signers_of(records, resolved, unknown, max_bytes) -> list: per record its
 * signer's id, None, or `unknown` (ask the Python check). A record is a tuple
 * with its value at index 4 and its headers at 5 (streams.records.InRecord);
 * a value that is not bytes or is over max_bytes gets None. `resolved` maps
 * (tp-tenant bytes, tp-sig bytes before ",sig=") to a tuple whose item 2 is
 * the signer's id (str) and item 3 its keyed_states (bytes). */
static PyObject *
signers_of(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *records, *resolved, *unknown;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "OO!On", &records, &PyDict_Type, &resolved, &unknown, &max_bytes))
        return NULL;
    PyObject *seq = PySequence_Fast(records, "records must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *out = PyList_New(n);
    Job *jobs = PyMem_Malloc(sizeof(Job) * (size_t)(n > 0 ? n : 1));
    /* Every object a job points into, kept alive while the GIL is released
     * (the records' list is the caller's and could change meanwhile). */
    PyObject *owned = PyList_New(0);
    Py_ssize_t count = 0;
    if (out == NULL || jobs == NULL || owned == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *value = NULL, *sig = NULL, *entry = NULL;
        PyObject *rec = PySequence_Fast_GET_ITEM(seq, i);
        int found = lookup(rec, resolved, max_bytes, &value, &sig, &entry);
        if (found < 0)
            goto fail;
        PyObject *verdict = found == 0 ? Py_None : unknown;
        Py_INCREF(verdict);
        PyList_SET_ITEM(out, i, verdict);
        if (entry == NULL) {
            Py_XDECREF(sig);
            continue;
        }
        PyObject *states = PyTuple_Check(entry) && PyTuple_GET_SIZE(entry) >= 4
                               ? PyTuple_GET_ITEM(entry, 3)
                               : NULL;
        PyObject *signer_id = states == NULL ? NULL : PyTuple_GET_ITEM(entry, 2);
        Py_ssize_t sig_len = PyBytes_GET_SIZE(sig);
        const char *hex_sig = PyBytes_AS_STRING(sig) + sig_len - HEX_BYTES;
        if (states == NULL || !PyBytes_CheckExact(states) ||
            PyBytes_GET_SIZE(states) != (Py_ssize_t)STATES_BYTES ||
            !PyUnicode_CheckExact(signer_id)) {
            Py_DECREF(entry); /* not an entry of this module: ask Python */
            Py_DECREF(sig);
            continue;
        }
        /* Not 64 hex digits after ",sig=": no HMAC can match. */
        if (sig_len < HEX_BYTES + (Py_ssize_t)(sizeof SIG_FIELD - 1) ||
            memcmp(hex_sig - (sizeof SIG_FIELD - 1), SIG_FIELD, sizeof SIG_FIELD - 1) != 0) {
            Py_DECREF(entry);
            Py_DECREF(sig);
            Py_INCREF(Py_None);
            PyList_SetItem(out, i, Py_None); /* drops `unknown` */
            continue;
        }
        if (PyList_Append(owned, entry) < 0 || PyList_Append(owned, sig) < 0 ||
            PyList_Append(owned, value) < 0) {
            Py_DECREF(entry);
            Py_DECREF(sig);
            goto fail;
        }
        Py_DECREF(entry);
        Py_DECREF(sig);
        jobs[count++] = (Job){
            .value = (const unsigned char *)PyBytes_AS_STRING(value),
            .value_len = PyBytes_GET_SIZE(value),
            .states = (const SHA256_CTX *)PyBytes_AS_STRING(states),
            .hex_sig = (const unsigned char *)hex_sig,
            .signer_id = signer_id,
            .index = i,
            .valid = 0,
        };
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < count; j++)
        hmac_check(&jobs[j]);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < count; j++) {
        PyObject *verdict = jobs[j].valid ? jobs[j].signer_id : Py_None;
        Py_INCREF(verdict);
        PyList_SetItem(out, jobs[j].index, verdict); /* drops `unknown` */
    }
    PyMem_Free(jobs);
    Py_DECREF(owned);
    Py_DECREF(seq);
    return out;
fail:
    PyMem_Free(jobs);
    Py_XDECREF(owned);
    Py_XDECREF(out);
    Py_DECREF(seq);
    return NULL;
}

static PyMethodDef methods[] = {
    {"keyed_states", keyed_states, METH_O,
     "keyed_states(secret) -> bytes: HMAC-SHA256's inner and outer states for the key."},
    {"signers_of", signers_of, METH_VARARGS,
     "signers_of(records, resolved, unknown, max_bytes) -> list: each record's signer, None or unknown."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_sigcheck",
    .m_doc = "HMAC-SHA256 record signatures checked a slice at a time (see schemas/signing.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__sigcheck(void)
{
    return PyModule_Create(&module_def);
}
