/* SHA-256 over many short messages in one call, for the attestation rows' records root.
 *
 * Why native: a records root over n rows is 2n - 1 SHA-256 calls (a leaf per row, then the
 * interior nodes of RFC 6962's tree). From Python each is one hashlib call, ~0.35 us of call
 * overhead around ~0.2-0.5 us of hashing (docs/BENCHMARKS.md, issue 16), which alone bounded
 * `audit verify --skip-claims` near 1 M records/s on both cores with nothing else done. Here
 * the loop runs in C over the Arrow buffers, with the GIL released, so the batcher does not hold
 * the lock the event loop needs while it hashes.
 *
 * The hashing is OpenSSL's (the libcrypto Python's hashlib uses), not an implementation of our
 * own; render_gateway.audit.batch_sha256 holds the pure-Python reference it is tested against.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define HASH_SIZE 32

static EVP_MD *sha256_md = NULL;

/* One digest with a context the caller owns (reset by Init each time). */
static int
digest(EVP_MD_CTX *ctx, const unsigned char *prefix, size_t prefix_len,
       const unsigned char *data, size_t len, unsigned char *out)
{
    unsigned int written = 0;
    if (EVP_DigestInit_ex2(ctx, sha256_md, NULL) != 1) return 0;
    if (prefix_len && EVP_DigestUpdate(ctx, prefix, prefix_len) != 1) return 0;
    if (len && EVP_DigestUpdate(ctx, data, len) != 1) return 0;
    if (EVP_DigestFinal_ex(ctx, out, &written) != 1 || written != HASH_SIZE) return 0;
    return 1;
}

static void
offset_at(const Py_buffer *offsets, Py_ssize_t index, int64_t *value)
{
    const char *at = (const char *)offsets->buf + index * offsets->itemsize;
    if (offsets->itemsize == 4) {
        int32_t v;
        memcpy(&v, at, 4);
        *value = v;
    } else {
        int64_t v;
        memcpy(&v, at, 8);
        *value = v;
    }
}

/* One piece of every row: a fixed-width run (row i is data[i*width : (i+1)*width]) or a
 * variable-width column (row i is data[offsets[i] : offsets[i+1]]). */
typedef struct {
    Py_buffer data;
    Py_buffer offsets; /* .buf == NULL for a fixed-width piece */
    Py_ssize_t width;
} Piece;

static void
release_pieces(Piece *pieces, Py_ssize_t count)
{
    for (Py_ssize_t i = 0; i < count; i++) {
        PyBuffer_Release(&pieces[i].data);
        if (pieces[i].offsets.buf != NULL) PyBuffer_Release(&pieces[i].offsets);
    }
    PyMem_Free(pieces);
}

static int
check_offsets_format(const Py_buffer *offsets)
{
    const char *format = offsets->format ? offsets->format : "B";
    char kind = format[strlen(format) - 1];
    /* Big-endian offsets (">", "!") would be read as native ones: the wrong rows, not an
     * overread (every offset is bounds-checked), but refused all the same. */
    return offsets->ndim == 1 && format[0] != '>' && format[0] != '!'
        && ((kind == 'i' && offsets->itemsize == 4)
            || ((kind == 'l' || kind == 'q') && offsets->itemsize == 8));
}

/* Every offset of a variable piece: non-decreasing, within its data, n + 1 of them. */
static int
check_offsets(const Py_buffer *data, const Py_buffer *offsets, Py_ssize_t rows)
{
    if (!check_offsets_format(offsets) || offsets->len / offsets->itemsize != rows + 1) return 0;
    int64_t previous = 0, value = 0;
    offset_at(offsets, 0, &previous);
    if (previous < 0 || previous > data->len) return 0;
    for (Py_ssize_t i = 1; i <= rows; i++) {
        offset_at(offsets, i, &value);
        if (value < previous || value > data->len) return 0;
        previous = value;
    }
    return 1;
}

PyDoc_STRVAR(hash_rows_doc,
"hash_rows(rows, pieces, /) -> bytes\n--\n\n"
"SHA-256 of every row's pieces laid end to end, the 32-byte digests concatenated. Each piece\n"
"is (data, width) for a fixed-width run, row i being data[i*width:(i+1)*width], or\n"
"(data, offsets) for a variable-width column as Arrow lays it out, row i being\n"
"data[offsets[i]:offsets[i+1]] (native-endian int32 or int64 offsets, rows + 1 of them, checked\n"
"before anything is read). The joined rows are never built: each is copied into one scratch\n"
"buffer and hashed.");

static PyObject *
hash_rows(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyLong_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "hash_rows takes a row count and a list of pieces");
        return NULL;
    }
    Py_ssize_t rows = PyLong_AsSsize_t(args[0]);
    if (rows < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "rows must not be negative");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(args[1]);
    Piece *pieces = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Piece));
    if (pieces == NULL) return PyErr_NoMemory();
    Py_ssize_t held = 0;
    for (; held < count; held++) {
        PyObject *item = PyList_GET_ITEM(args[1], held);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            PyErr_SetString(PyExc_TypeError, "each piece is (data, width) or (data, offsets)");
            goto fail;
        }
        Piece *piece = &pieces[held];
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(item, 0), &piece->data, PyBUF_SIMPLE) < 0)
            goto fail;
        PyObject *shape = PyTuple_GET_ITEM(item, 1);
        if (PyLong_Check(shape)) {
            piece->width = PyLong_AsSsize_t(shape);
            if (piece->width < 0 || (rows && piece->width > PY_SSIZE_T_MAX / rows)
                || piece->data.len != piece->width * rows) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "a fixed-width piece must be rows x width");
                held++;
                goto fail;
            }
        } else {
            if (PyObject_GetBuffer(shape, &piece->offsets, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
                piece->offsets.buf = NULL;
                held++;
                goto fail;
            }
            if (!check_offsets(&piece->data, &piece->offsets, rows)) {
                PyErr_SetString(PyExc_ValueError,
                                "a variable piece needs rows + 1 int32 or int64 offsets, "
                                "non-decreasing and within its data");
                held++;
                goto fail;
            }
        }
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, rows * HASH_SIZE);
    if (result == NULL) goto fail;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    size_t capacity = 4096;
    unsigned char *row = malloc(capacity);
    if (ctx == NULL || row == NULL) ok = 0;
    for (Py_ssize_t i = 0; ok && i < rows; i++) {
        size_t length = 0;
        for (Py_ssize_t p = 0; ok && p < count; p++) {
            const Piece *piece = &pieces[p];
            const unsigned char *from;
            size_t size;
            if (piece->offsets.buf == NULL) {
                from = (const unsigned char *)piece->data.buf + i * piece->width;
                size = (size_t)piece->width;
            } else {
                int64_t start = 0, end = 0;
                offset_at(&piece->offsets, i, &start);
                offset_at(&piece->offsets, i + 1, &end);
                from = (const unsigned char *)piece->data.buf + start;
                size = (size_t)(end - start);
            }
            if (length + size > capacity) {
                while (length + size > capacity) capacity *= 2;
                unsigned char *grown = realloc(row, capacity);
                if (grown == NULL) {
                    ok = 0;
                    break;
                }
                row = grown;
            }
            memcpy(row + length, from, size);
            length += size;
        }
        if (ok) ok = digest(ctx, NULL, 0, row, length, out + i * HASH_SIZE);
    }
    free(row);
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    release_pieces(pieces, count);
    if (!ok) {
        Py_DECREF(result);
        PyErr_SetString(PyExc_MemoryError, "out of memory or OpenSSL SHA-256 failed");
        return NULL;
    }
    return result;
fail:
    release_pieces(pieces, held);
    return NULL;
}

PyDoc_STRVAR(tree_root_doc,
"tree_root(leaf_hashes, /) -> bytes\n--\n\n"
"RFC 6962's MTH over the leaf hashes laid end to end (32 bytes each): pairs hashed as\n"
"SHA-256(0x01 || left || right), level by level, an odd last node carried up unchanged.\n"
"The empty tree is SHA-256 of nothing.");

static PyObject *
tree_root(PyObject *Py_UNUSED(module), PyObject *leaves_arg)
{
    Py_buffer leaves;
    if (PyObject_GetBuffer(leaves_arg, &leaves, PyBUF_SIMPLE) < 0) return NULL;
    if (leaves.len % HASH_SIZE != 0) {
        PyBuffer_Release(&leaves);
        PyErr_SetString(PyExc_ValueError, "leaf hashes are 32 bytes each");
        return NULL;
    }
    Py_ssize_t n = leaves.len / HASH_SIZE;
    unsigned char root[HASH_SIZE];
    static const unsigned char node_prefix[1] = {0x01};
    int ok = 1;
    unsigned char *level = NULL;
    if (n > 1) {
        level = PyMem_RawMalloc((size_t)n * HASH_SIZE);
        if (level == NULL) {
            PyBuffer_Release(&leaves);
            return PyErr_NoMemory();
        }
    }
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL) {
        ok = 0;
    } else if (n == 0) {
        ok = digest(ctx, NULL, 0, NULL, 0, root);
    } else if (n == 1) {
        memcpy(root, leaves.buf, HASH_SIZE);
    } else {
        memcpy(level, leaves.buf, (size_t)n * HASH_SIZE);
        Py_ssize_t width = n;
        while (ok && width > 1) {
            Py_ssize_t pairs = width / 2;
            /* Parents overwrite the front of the level in place: parent i is written after
             * children 2i and 2i + 1 have been read, and never past them. */
            for (Py_ssize_t i = 0; ok && i < pairs; i++) {
                ok = digest(ctx, node_prefix, 1, level + 2 * i * HASH_SIZE, 2 * HASH_SIZE,
                            level + i * HASH_SIZE);
            }
            if (width % 2) {
                memmove(level + pairs * HASH_SIZE, level + (width - 1) * HASH_SIZE, HASH_SIZE);
            }
            width = pairs + width % 2;
        }
        memcpy(root, level, HASH_SIZE);
    }
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(level);
    PyBuffer_Release(&leaves);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL SHA-256 failed");
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)root, HASH_SIZE);
}

static PyMethodDef methods[] = {
    {"hash_rows", (PyCFunction)(void (*)(void))hash_rows, METH_FASTCALL, hash_rows_doc},
    {"tree_root", (PyCFunction)tree_root, METH_O, tree_root_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_batch_sha256",
    "SHA-256 over many messages per call (see render_gateway.audit.batch_sha256).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__batch_sha256(void)
{
    if (sha256_md == NULL) {
        sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
        if (sha256_md == NULL) {
            PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA256");
            return NULL;
        }
    }
    return PyModule_Create(&module_def);
}
