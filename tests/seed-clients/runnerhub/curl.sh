# Get JWT token
TOKEN=$(curl -s -X POST http://localhost:3001/api/auth/login \
  -H "Content-Type: application/json" \
  -d '{"username":"admin","password":"admin123"}' | \
  jq -r '.token')

# Make authenticated request
curl -H "Authorization: Bearer $TOKEN" \
  http://localhost:3001/api/jobs
