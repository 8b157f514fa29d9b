import boto3, json, sys, concurrent.futures as cf
# usage: python3 plant-catalog.py N  (liverec-s3 on 127.0.0.1:19555; pip install boto3)
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:19555", aws_access_key_id="liverec-test",
    aws_secret_access_key="liverec-test-secret-key", region_name="us-east-1")
n = int(sys.argv[1])
def put(i):
    key = f"localhost/live/s{i%100}/s{i%100}-{i}.flv"
    rec = {"key": key, "format": "flv", "domain": "localhost", "app": "live", "stream": f"s{i%100}",
           "start_ms": 1700000000000 + i*4000, "end_ms": 1700000004000 + i*4000, "duration_ms": 4000, "size": 1000+i}
    s3.put_object(Bucket="rec", Key=f".liverec/state/recordings/{key}.json", Body=json.dumps(rec).encode())
with cf.ThreadPoolExecutor(16) as ex: list(ex.map(put, range(n)))
print("planted", n)
