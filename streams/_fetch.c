/* The records of one Kafka record batch (v2) as the worker's InRecords, in C.
 *
 * `unpack(buf, count, base_offset, first_offset, topic, partition,
 * generation, cls)` reads `count` records from `buf`, the batch's records
 * section (after the 61-byte batch header, decompressed), and returns a list
 * of `cls` tuples (topic, partition, offset, key, value, headers,
 * generation) for the records at or after `first_offset`. `cls` is
 * streams.records.InRecord (a NamedTuple: a tuple subclass without a dict).
 *
 * Why: aiokafka's parser (Cython) builds a DefaultRecord object per record,
 * and the worker's loop then read its attributes into an InRecord: about
 * 0.5 us of Python per record on the consumer thread, which holds the GIL
 * the worker's processing needs (bench/parse_bench.py). The batch level
 * (offsets, CRC, compression, control batches) stays in Python
 * (streams/hand_over.py); a record this code cannot read raises ValueError,
 * and the caller parses the fetch again with aiokafka, whose error then
 * names the problem.
 *
 * The record layout (Kafka's DefaultRecord, all varints zigzag-encoded):
 * length, attributes (1 byte), timestampDelta, offsetDelta, keyLength, key,
 * valueLength, value, headerCount, then per header: keyLength, key (UTF-8),
 * valueLength, value. A length of -1 is null (never for a header key).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define IN_RECORD_FIELDS 7

/* One zigzag varint of at most 10 bytes at *pos, below `end`. */
static int
read_varint(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos, int64_t *out)
{
    uint64_t raw = 0;
    int shift = 0;
    for (;;) {
        if (*pos >= end || shift > 63) {
            return -1;
        }
        unsigned char b = p[(*pos)++];
        raw |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            break;
        }
        shift += 7;
    }
    *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
    return 0;
}

/* The length-prefixed span at *pos: its start and length, *len = -1 for a
 * null (nothing consumed after the length). -1 if malformed. */
static int
read_span(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos,
          const unsigned char **start, int64_t *len)
{
    if (read_varint(p, end, pos, len) < 0) {
        return -1;
    }
    if (*len == -1) {
        return 0;
    }
    if (*len < 0 || *len > end - *pos) {
        return -1;
    }
    *start = p + *pos;
    *pos += (Py_ssize_t)*len;
    return 0;
}

/* A length-prefixed field: Py_None for -1, else bytes. */
static PyObject *
read_field(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos)
{
    const unsigned char *start = NULL;
    int64_t len;
    if (read_span(p, end, pos, &start, &len) < 0) {
        return NULL;
    }
    if (len == -1) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)start, (Py_ssize_t)len);
}

/* Header names seen in this call, as str: a fleet's records carry the same
 * few names (tp-tenant, tp-sig), so each is decoded once a batch, not once
 * a record. The bytes are the batch's own (stable for the call). */
#define NAME_CACHE 8

typedef struct {
    const unsigned char *bytes;
    Py_ssize_t len;
    PyObject *str; /* a reference of its own */
} CachedName;

typedef struct {
    CachedName entries[NAME_CACHE];
    int used;
} NameCache;

static void
name_cache_clear(NameCache *cache)
{
    for (int i = 0; i < cache->used; i++) {
        Py_DECREF(cache->entries[i].str);
    }
    cache->used = 0;
}

/* The header name at *pos as a new reference to a str (NULL if malformed). */
static PyObject *
read_name(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos, NameCache *cache)
{
    const unsigned char *start = NULL;
    int64_t len;
    if (read_span(p, end, pos, &start, &len) < 0 || len == -1) {
        return NULL; /* a header name is never null */
    }
    for (int i = 0; i < cache->used; i++) {
        CachedName *c = &cache->entries[i];
        if (c->len == (Py_ssize_t)len && memcmp(c->bytes, start, (size_t)len) == 0) {
            Py_INCREF(c->str);
            return c->str;
        }
    }
    PyObject *s = PyUnicode_DecodeUTF8((const char *)start, (Py_ssize_t)len, NULL);
    if (s == NULL) {
        PyErr_Clear(); /* reported as a malformed record */
        return NULL;
    }
    if (cache->used < NAME_CACHE) {
        CachedName *c = &cache->entries[cache->used++];
        c->bytes = start;
        c->len = (Py_ssize_t)len;
        Py_INCREF(s);
        c->str = s;
    }
    return s;
}

static PyObject *
read_headers(const unsigned char *p, Py_ssize_t end, Py_ssize_t *pos, NameCache *names)
{
    int64_t count;
    if (read_varint(p, end, pos, &count) < 0 || count < 0 || count > end - *pos) {
        return NULL;
    }
    PyObject *headers = PyTuple_New((Py_ssize_t)count);
    if (headers == NULL || count == 0) {
        return headers;
    }
    for (Py_ssize_t i = 0; i < (Py_ssize_t)count; i++) {
        PyObject *name = read_name(p, end, pos, names);
        if (name == NULL) {
            Py_DECREF(headers);
            return NULL;
        }
        PyObject *value = read_field(p, end, pos);
        if (value == NULL) {
            Py_DECREF(name);
            Py_DECREF(headers);
            return NULL;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            Py_DECREF(headers);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyTuple_SET_ITEM(headers, i, pair);
    }
    return headers;
}

static PyObject *
malformed(Py_ssize_t index)
{
    if (!PyErr_Occurred()) {
        PyErr_Format(PyExc_ValueError, "record %zd of the batch is malformed", index);
    }
    return NULL;
}

static PyObject *
unpack(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer view;
    Py_ssize_t count;
    long long base_offset, first_offset;
    PyObject *topic, *partition, *generation;
    PyTypeObject *cls;
    if (!PyArg_ParseTuple(args, "y*nLLUOOO!", &view, &count, &base_offset, &first_offset,
                          &topic, &partition, &generation, &PyType_Type, &cls)) {
        return NULL;
    }
    if (!PyType_IsSubtype(cls, &PyTuple_Type) || count < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "cls must be a tuple type and count >= 0");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, pos = 0;
    NameCache names = {.used = 0};
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t length, ts_delta, offset_delta;
        if (read_varint(p, n, &pos, &length) < 0 || length < 1 || length > n - pos) {
            goto fail_malformed;
        }
        Py_ssize_t end = pos + (Py_ssize_t)length;
        pos++; /* attributes: unused by the record format v2 */
        if (read_varint(p, end, &pos, &ts_delta) < 0
            || read_varint(p, end, &pos, &offset_delta) < 0) {
            goto fail_malformed;
        }
        long long offset = base_offset + offset_delta;
        if (offset < first_offset) {
            pos = end; /* before the fetch position (a compressed batch's head) */
            continue;
        }
        PyObject *key = read_field(p, end, &pos);
        if (key == NULL) {
            goto fail_malformed;
        }
        PyObject *value = read_field(p, end, &pos);
        if (value == NULL) {
            Py_DECREF(key);
            goto fail_malformed;
        }
        PyObject *headers = read_headers(p, end, &pos, &names);
        if (headers == NULL || pos != end) {
            Py_XDECREF(headers);
            Py_DECREF(key);
            Py_DECREF(value);
            goto fail_malformed;
        }
        PyObject *py_offset = PyLong_FromLongLong(offset);
        PyObject *rec = py_offset == NULL ? NULL : cls->tp_alloc(cls, IN_RECORD_FIELDS);
        if (rec == NULL) {
            Py_XDECREF(py_offset);
            Py_DECREF(key);
            Py_DECREF(value);
            Py_DECREF(headers);
            goto fail;
        }
        Py_INCREF(topic);
        Py_INCREF(partition);
        Py_INCREF(generation);
        PyTuple_SET_ITEM(rec, 0, topic);
        PyTuple_SET_ITEM(rec, 1, partition);
        PyTuple_SET_ITEM(rec, 2, py_offset);
        PyTuple_SET_ITEM(rec, 3, key);
        PyTuple_SET_ITEM(rec, 4, value);
        PyTuple_SET_ITEM(rec, 5, headers);
        PyTuple_SET_ITEM(rec, 6, generation);
        int appended = PyList_Append(out, rec);
        Py_DECREF(rec);
        if (appended < 0) {
            goto fail;
        }
        continue;
    fail_malformed:
        malformed(i);
        goto fail;
    }
    if (pos != n) {
        PyErr_Format(PyExc_ValueError, "%zd bytes after the batch's %zd records", n - pos, count);
        goto fail;
    }
    name_cache_clear(&names);
    PyBuffer_Release(&view);
    return out;
fail:
    name_cache_clear(&names);
    PyBuffer_Release(&view);
    Py_DECREF(out);
    return NULL;
}

static PyMethodDef methods[] = {
    {"unpack", unpack, METH_VARARGS,
     "unpack(buf, count, base_offset, first_offset, topic, partition, generation, cls)\n"
     "--\n\n"
     "The records of a v2 batch's records section as `cls` tuples; ValueError if malformed."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fetch",
    .m_doc = "Kafka record batches to the worker's InRecords (see streams/hand_over.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__fetch(void)
{
    return PyModule_Create(&module_def);
}
