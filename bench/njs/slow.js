// The slow shadow for bench/mirror.sh: answers every request after 200 ms, as a new
// version under test that is much slower than the primary.
function answer(r) {
    setTimeout(() => r.return(200, 'hello from shadow\n'), 200);
}

export default { answer };
