// Promise.withResolvers for Node 20 (it arrived in Node 22; js-libp2p 3.x calls it).
// Import this module before any libp2p module: ES modules run in import order.
if (typeof Promise.withResolvers !== "function") {
  Promise.withResolvers = function withResolvers() {
    let resolve;
    let reject;
    const promise = new this((res, rej) => {
      resolve = res;
      reject = rej;
    });
    return { promise, resolve, reject };
  };
}
